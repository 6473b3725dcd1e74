"""VitkitTrainer: Lightning's Trainer, saying where its outputs went, plus the commands that use a trained model
(``vitkit embed|export|explain``) and ``vitkit tune`` (:mod:`vitkit.tune`).

LightningCLI turns each Trainer method it is told about into a subcommand with the same ``--config``,
``--ckpt_path``, ``--model``, ``--data`` and ``--trainer`` arguments as ``fit`` and ``predict``; the work itself is in
:mod:`vitkit.export`, :mod:`vitkit.explain` and :mod:`vitkit.writers`. Outputs go under ``default_root_dir``, which
the CLI sets to the run folder (:mod:`vitkit.runs`), or where ``--output`` says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_info

from vitkit.checkpoints import read_checkpoint
from vitkit.data.images import is_image_file, list_images
from vitkit.errors import DataError, VitkitError, WeightsError
from vitkit.writers import CSVPredictionWriter, EmbeddingWriter


class VitkitTrainer(L.Trainer):
    """A Lightning Trainer with ``embed``, ``export``, ``explain`` and ``tune``, whose commands say what they wrote."""

    #: Whether ``fit`` prints the run folder and checkpoints (off while ``tune`` runs Lightning's tuner through fit).
    announce: bool = True
    #: The parsed recipe ``tune --mode sweep`` builds its trials from; the CLI sets it (:class:`vitkit.sweep.Recipe`).
    recipe: Any = None

    def fit(
        self,
        model: L.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
        report: bool = True,
    ) -> None:
        """Train a model into a new run folder (or resume one: --ckpt_path last); print its best and last checkpoints.

        Lightning's fit, saying where the run's folder is when it starts, and its best and last checkpoints when it
        ends (or how to resume it when it was interrupted).

        Args:
            ckpt_path: a checkpoint to resume, e.g. ``last`` (the latest run's last checkpoint).
            report: when training finishes, write ``vitkit report`` of the best checkpoint into ``<run>/report``
                (and log it to W&B when a W&B logger is on); needs the ``report`` extra (matplotlib).
        """
        if not self.announce:
            return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)
        done = _epochs_done(ckpt_path) if ckpt_path is not None else 0
        if self.max_epochs and self.max_epochs > 0 and done >= self.max_epochs:
            rank_zero_info(
                f"vitkit: {_shown(ckpt_path)} already finished its {self.max_epochs} epochs ({done} trained): nothing "
                "to resume. To train on from its weights, start a new run with --model.backbone.init_args.weights "
                f"{ckpt_path}."
            )
            return
        resuming = f" (resuming {_shown(ckpt_path)})" if ckpt_path else ""
        # Said once the data is set up and checked: a run that fails before that leaves no folder to name.
        announce = _Announce(f"vitkit: run folder: {_shown(self.default_root_dir)}{resuming}")
        self.callbacks.append(announce)
        written = summary = None
        try:
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)
            # Before the report: scoring the best checkpoint restores its (older) checkpoint-callback states.
            summary = self._fit_summary()
            if report and self.state.status == TrainerStatus.FINISHED:
                from vitkit.report import report_after_fit

                bar = self.progress_bar_callback  # the report's predict pass is no new stage to watch
                if bar is not None:
                    bar.disable()
                try:
                    written = report_after_fit(self, model, datamodule)
                except KeyboardInterrupt:  # training and its checkpoints are complete: nothing to resume
                    summary += (
                        "\ninterrupted during the end-of-fit report (training had finished): write it with "
                        "vitkit report --ckpt_path best"
                    )
                    raise SystemExit(130) from None
                finally:
                    if bar is not None:
                        bar.enable()
        except BaseException as err:  # Ctrl-C and SIGTERM, which Lightning ends with SystemExit, or an error
            if self.is_global_zero and announce.said and summary is None:  # an error before the start: the error
                summary = self._fit_summary(interrupted=isinstance(err, (KeyboardInterrupt, SystemExit)))
            raise
        finally:
            self.callbacks.remove(announce)
            if self.is_global_zero and summary:
                rank_zero_info(summary + (f"\nreport: {_shown(written)}" if written else ""))

    def save_checkpoint(
        self, filepath: str | Path, weights_only: bool | None = None, storage_options: Any | None = None
    ) -> None:
        """Lightning's, with ``weights_only`` said: a full checkpoint unless asked (Lightning's tuners leave it unset,
        and Lightning then logs that it defaults to ``False``; reading a checkpoint is always ``weights_only=True``:
        :class:`~vitkit.checkpoints.AtomicCheckpointIO`)."""
        super().save_checkpoint(filepath, bool(weights_only), storage_options)

    def _fit_summary(self, interrupted: bool = False) -> str:
        lines = [f"run folder: {_shown(self.default_root_dir)}"]
        for callback in self.checkpoint_callbacks:
            if callback.monitor is not None and callback.best_model_path:
                score = callback.best_model_score
                value = f" ({callback.monitor} {float(score):.4g})" if score is not None else ""
                lines.append(f"best checkpoint: {_shown(callback.best_model_path)}{value}")
        lasts = [c.last_model_path or c.best_model_path for c in self.checkpoint_callbacks if c.monitor is None]
        lasts = [path for path in lasts if path and Path(path).is_file()]
        lines += [f"last checkpoint: {_shown(path)}" for path in lasts]
        if interrupted and lasts:  # `--ckpt_path last` finds this run's last.ckpt: the newest one
            lines.append(f"interrupted in epoch {self.current_epoch}: resume it with the same command and "
                         "--ckpt_path last")  # fmt: skip
        elif interrupted:
            lines.append(f"interrupted in epoch {self.current_epoch}, before its first checkpoint: nothing to resume")
        return "\n".join(lines)

    def validate(
        self,
        model: L.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: L.LightningDataModule | None = None,
        weights_only: bool | None = None,
        output: str | None = None,
    ) -> list[Mapping[str, float]]:
        """Score a checkpoint on its data's val split; the metrics also go to <run>/validate/metrics.json.

        Args:
            ckpt_path: the checkpoint to score: a file, ``best`` or ``last`` (the latest run's).
            output: folder for ``metrics.json`` (and, from the CLI, the report); default ``<run folder>/validate``.
        """
        results = super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)
        return self._write_metrics("validate", results, output, ckpt_path, datamodule)

    def test(
        self,
        model: L.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: L.LightningDataModule | None = None,
        weights_only: bool | None = None,
        output: str | None = None,
    ) -> list[Mapping[str, float]]:
        """Score a checkpoint on its data's test split; the metrics also go to <run>/test/metrics.json.

        Args:
            ckpt_path: the checkpoint to score: a file, ``best`` or ``last`` (the latest run's).
            output: folder for ``metrics.json`` (and, from the CLI, the report); default ``<run folder>/test``.
        """
        results = super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)
        return self._write_metrics("test", results, output, ckpt_path, datamodule)

    def _write_metrics(self, stage: str, results: list[Any], output: Any, ckpt_path: Any, datamodule: Any) -> list[Any]:
        """``metrics.json``: the metrics, the checkpoint scored and the data it was scored on."""
        if self.is_global_zero and results:
            path = Path(output or self.default_root_dir) / "metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            source = datamodule.describe_source() if hasattr(datamodule, "describe_source") else None
            record = {**{k: float(v) for k, v in results[0].items()}, "checkpoint": str(ckpt_path), "data": source}
            path.write_text(json.dumps(record, indent=2) + "\n")
            rank_zero_info(f"{stage} metrics written to {_shown(path)}")
        return results

    def predict(
        self,
        model: L.LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: L.LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
        output: str | None = None,
    ) -> Any:
        """Predict every image of a folder (--data.predict_root) or of the test/val split, one CSV row per image.

        Args:
            ckpt_path: the trained checkpoint: a file, ``best`` or ``last`` (the latest run's).
            output: the CSV file; default ``<run folder>/predictions/<folder name, or test/val>.csv``.
        """
        writers = [c for c in self.callbacks if isinstance(c, CSVPredictionWriter)]
        for writer in writers:
            if output is not None:
                writer.output = Path(output)
            elif writer.output is None and hasattr(datamodule, "predict_source"):
                writer.output = Path(self.default_root_dir) / "predictions" / f"{datamodule.predict_source}.csv"
        results = super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)
        for writer in writers:
            rank_zero_info(f"predictions written to {_shown(writer.path(self))}")
        return results

    def tune(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        mode: Literal["lr", "batch_size", "sweep"] = "lr",
        sweep: str | None = None,
        trials: int = 20,
        min_lr: float = 1e-7,
        max_lr: float = 1.0,
        lr_steps: int = 100,
        max_batch_size: int = 8192,
    ) -> Any:
        """Find a learning rate (LR range test), the largest batch that fits, or the best recipe values (a sweep).

        Args:
            model: the model as the recipe builds it (fine-tuning strategy and parameter groups included).
            datamodule: the recipe's data.
            mode: ``lr``: Lightning's LR range test, a plot and the suggested ``--model.optimizer.init_args.lr``;
                ``batch_size``: Lightning's batch-size scaler (binary search), with the LR scaled linearly to it;
                ``sweep``: an Optuna study over the recipe keys in ``sweep`` (needs the ``tune`` extra).
            sweep: a YAML search space file, or a shipped one's name (``quickstart``): recipe keys mapped to
                ``loguniform LOW HIGH``, ``uniform LOW HIGH``, ``int LOW HIGH``, a list of choices, or a fixed value.
            trials: finished trials the study should hold; the same command continues a stopped sweep up to it.
            min_lr: lowest LR of the range test.
            max_lr: highest LR of the range test (it stops earlier when the loss diverges).
            lr_steps: training steps of the range test.
            max_batch_size: the batch-size search goes no higher.
        """
        from vitkit.tune import run_tune

        return run_tune(self, model, datamodule, mode, sweep, trials, min_lr, max_lr, lr_steps, max_batch_size)

    def report(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        output: str | None = None,
        top_losses: int = 16,
        confidence: float = 0.9,
    ) -> Path | None:
        """Write a report of the model on the data's val (and test) split: ``report.html`` (per-class table,
        confusion matrix, PR curves, calibration, top losses with attention), ``report.json`` and
        ``label_errors.csv``. Needs the ``report`` extra (matplotlib).

        Args:
            ckpt_path: the trained checkpoint: a file, ``best`` or ``last`` (the latest run's).
            output: folder for the files; default ``<run folder>/report``.
            top_losses: how many of the highest-loss images to show.
            confidence: calibrated confidence from which a contradicted label is listed as a suspected error.
        """
        from vitkit.report import make_report

        if not 0 < confidence <= 1 or top_losses < 0:
            raise VitkitError(f"--confidence {confidence} --top_losses {top_losses}: expected a confidence in (0, 1] "
                              "and top_losses >= 0.")  # fmt: skip

        folder = Path(output) if output else Path(self.default_root_dir) / "report"
        written = make_report(self, model, datamodule, ckpt_path, folder, top_losses, confidence)
        if written is not None:
            print(f"report written to {_shown(written)} (numbers: report.json, suspected label errors: "
                  "label_errors.csv)")  # fmt: skip
        return written

    def embed(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        output: str | None = None,
    ) -> Path:
        """Write the pooled backbone features of the data's predict images (.npy) with an index CSV.

        Args:
            model: the model whose backbone encodes the images.
            datamodule: the images (``--data.predict_root DIR``, else the test or val split).
            ckpt_path: the trained checkpoint.
            output: output path without suffix (``.npy`` and ``.csv`` are added); default
                ``<run folder>/embeddings/<folder name, or test/val>``.
        """
        if output is None and hasattr(datamodule, "predict_source"):
            output = str(Path(self.default_root_dir) / "embeddings" / datamodule.predict_source)
        writer = EmbeddingWriter(output)
        self.callbacks.append(writer)
        model.predict_output = "embedding"
        try:
            self.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
        finally:
            model.predict_output = "task"
            self.callbacks.remove(writer)
        stem = writer.stem(self)
        rank_zero_info(f"embeddings written to {stem.with_suffix('.npy')} (index: {stem.with_suffix('.csv')})")
        return stem.with_suffix(".npy")

    def export(
        self,
        model: L.LightningModule,
        ckpt_path: str,
        datamodule: L.LightningDataModule | None = None,
        format: Literal["onnx", "torchscript"] = "onnx",
        output: str | None = None,
        opset: int | None = None,
        quantize: Literal["int8"] | None = None,
        quantization: Literal["dynamic", "static"] = "dynamic",
    ) -> Path:
        """Export a trained model to ONNX or TorchScript, with a JSON sidecar (classes, input size, mean/std, task).

        Args:
            model: the model, rebuilt from the checkpoint's config.
            ckpt_path: the trained checkpoint.
            datamodule: the training images static quantization calibrates on.
            format: ``onnx`` (needs the ``export`` extra) or ``torchscript``.
            output: the model file; default: next to the checkpoint, its name with ``.onnx`` / ``.pt``.
            opset: ONNX opset version (torch's default if not given).
            quantize: ``int8``: an INT8 ONNX model (onnxruntime's quantization of the matrix products); default file
                ``<checkpoint>.int8.onnx``.
            quantization: ``dynamic`` (no data) or ``static`` (calibrated on 256 of the data's training images).
        """
        from vitkit.export import FORMATS, export_model

        load_weights(model, ckpt_path)
        suffix = (".int8" if quantize else "") + FORMATS.get(format, "")
        target = Path(output) if output else Path(ckpt_path).with_suffix(suffix)
        if quantize and format != "onnx":
            raise VitkitError(f"--quantize {quantize} makes an ONNX model: use it with --format onnx.")
        if quantize:
            from vitkit.quantize import export_int8

            written = export_int8(model, target, quantization, datamodule, opset)
        else:
            written = export_model(model, target, format, opset)
        print(f"exported {format}{f' {quantize}' if quantize else ''} model to {written} (metadata: {written}.json)")
        return written

    def publish(
        self,
        model: L.LightningModule,
        ckpt_path: str,
        output: str,
        datamodule: L.LightningDataModule | None = None,
        push_to: str | None = None,
    ) -> Path:
        """Write a trained model in timm's hub layout (config.json, model.safetensors, a README.md model card).

        ``timm.create_model("local-dir:OUTPUT", pretrained=True)`` loads it without vitkit; its logits are the
        calibrated ones (softmax / sigmoid of them is what ``vitkit predict`` writes). The head must be linear.

        Args:
            model: the model, rebuilt from the checkpoint's config.
            ckpt_path: the trained checkpoint.
            output: the folder to write.
            datamodule: not used.
            push_to: also upload the folder to this Hugging Face hub repo (``user/name``).
        """
        from vitkit.publish import publish_model, push_folder

        load_weights(model, ckpt_path)
        folder = publish_model(model, output, ckpt_path)
        print(f"published the model in timm's hub layout to {_shown(folder)} (config.json, model.safetensors, README)")
        if push_to:
            print(f"uploaded to {push_folder(folder, push_to)}")
        return folder

    def serve(
        self,
        model: L.LightningModule,
        ckpt_path: str,
        datamodule: L.LightningDataModule | None = None,
        port: int = 8000,
        host: str = "127.0.0.1",
        workers: int = 1,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        top_k: int = 5,
    ) -> None:
        """Serve a trained model over HTTP (LitServe, the ``serve`` extra): ``POST /predict`` with an image gives the
        calibrated prediction (``?explain=1`` adds the attention map); ``GET /`` is a page to try it.

        Args:
            model: the model, rebuilt from the checkpoint's config.
            ckpt_path: the trained checkpoint.
            datamodule: not used.
            port: the TCP port.
            host: the address to listen on; ``127.0.0.1`` is this machine only, ``0.0.0.0`` every interface.
            workers: model worker processes (each takes whole batches).
            max_batch_size: requests arriving together are predicted as one batch of up to this many.
            batch_timeout: seconds a worker waits to fill a batch.
            top_k: classes in a classification answer.
        """
        try:
            from vitkit.serve import serve_model
        except ImportError as err:
            if err.name not in ("litserve", "fastapi", "uvicorn", "multipart", "python_multipart"):
                raise
            raise VitkitError("vitkit serve runs on LitServe: pip install 'vitkit[serve]'.") from err

        load_weights(model, ckpt_path)
        serve_model(model, port, host, workers, max_batch_size, batch_timeout, top_k)

    def explain(
        self,
        model: L.LightningModule,
        ckpt_path: str,
        images: str | list[str],
        datamodule: L.LightningDataModule | None = None,
        method: Literal["rollout", "cls"] = "rollout",
        head_fusion: Literal["mean", "max"] = "mean",
        alpha: float = 0.5,
        output: str | None = None,
    ) -> list[Path]:
        """Draw where the ViT attends (attention rollout or last-layer CLS attention) over images, as PNGs.

        Args:
            model: the model, rebuilt from the checkpoint's config.
            ckpt_path: the trained checkpoint.
            images: an image file, a folder (searched recursively), or a list of them.
            datamodule: not used.
            method: ``rollout`` (attention through all layers, with the residual path) or ``cls`` (the last
                layer's attention from the class token).
            head_fusion: combine the heads' attention by ``mean`` or ``max``.
            alpha: opacity of the heat map over the image.
            output: folder for the PNGs; default ``<run folder>/attention/<folder name>`` (``images`` for files).
        """
        from vitkit.explain import explain_images

        load_weights(model, ckpt_path)
        items = [images] if isinstance(images, str) else list(images)
        paths = _image_paths(items)
        source = Path(items[0]).resolve().name if len(items) == 1 and Path(items[0]).is_dir() else "images"
        folder = Path(output) if output else Path(self.default_root_dir) / "attention" / source
        device = self.strategy.root_device
        written = explain_images(model, paths, folder, method, head_fusion, alpha, device=device)
        print(f"wrote {len(written)} attention maps ({method}) to {_shown(folder)}")
        return written


def _epochs_done(ckpt_path: str | Path) -> int:
    """Epochs a checkpoint has trained and validated (0 for a file that is not there: Lightning says so)."""
    if not Path(ckpt_path).is_file():
        return 0
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(loop.get("processed", checkpoint.get("epoch", -1) + 1))


def _shown(path: str | Path) -> str:
    """``path`` relative to the current folder when it is inside it (as the user typed it), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_weights(model: L.LightningModule, ckpt_path: str) -> None:
    """Load a vitkit checkpoint's weights into ``model`` (``weights_only``: no code in the file runs)."""
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    model.on_load_checkpoint(checkpoint)
    missing, unexpected = model.load_state_dict(checkpoint.get("state_dict", {}), strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}. "
            "Use the checkpoint's own config (only --ckpt_path), not another recipe's model."
        )


def _image_paths(items: list[str]) -> list[Path]:
    """Image files named directly or found under folders."""
    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            paths += list_images(path)
        elif path.is_file() and is_image_file(path):
            paths.append(path)
        else:
            raise DataError(f"not an image file or folder: {path}")
    if not paths:
        raise DataError(f"no images found in {', '.join(items)}.")
    return paths


class _Announce(L.Callback):
    """Prints a line when the fit starts, after the data's setup and checks (``on_fit_start``)."""

    def __init__(self, line: str) -> None:
        self.line, self.said = line, False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(self.line)
        self.said = True
