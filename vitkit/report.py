"""``vitkit report``: which classes fail, on which images, and whether the scores can be trusted.

The model runs over the data's val split (and test, when there is one) through ``Trainer.predict`` (any devices;
under DDP each image once, gathered on rank 0). Rank 0 then writes into the output folder:

- ``report.html``: self-contained (pictures are PNGs embedded as base64, drawn by :mod:`vitkit.report_figures`);
- ``report.json``: the numbers: ``per_class`` ({class: {precision, recall, f1, support}}), ``calibration``
  ({temperature, ece_before, ece_after}), ``overall``, ``most_confused``, multi-label ``thresholds``, regression
  ``per_target``; the val split at the top level, the test split under ``test``;
- ``label_errors.csv``: val/test images the model confidently disagrees with, for a person to review.
"""

from __future__ import annotations

import csv
import heapq
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from torchmetrics.functional import classification as C
from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score

from vitkit.calibration import cross_fitted, expected_calibration_error, fit_temperature
from vitkit.errors import DataError, VitkitError
from vitkit.tasks import Classification, MultiLabel
from vitkit.writers import _indices, _samples_of


def require_matplotlib() -> None:
    """Fail in one line when the ``report`` extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise VitkitError("vitkit report draws its pictures with matplotlib: pip install 'vitkit[report]'.") from err


class OutputCollector(BasePredictionWriter):
    """Keeps the raw outputs, targets and names of every predicted image, and the ``keep`` images with the
    highest loss; :meth:`gathered` brings all processes' parts to rank 0."""

    def __init__(self, keep: int = 16) -> None:
        super().__init__(write_interval="batch")
        self.keep = keep
        self._parts: list[tuple[list[int], torch.Tensor, torch.Tensor, list[str]]] = []
        self._worst: list[tuple[float, int, str, torch.Tensor]] = []

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:  # fmt: skip
        losses = sample_losses(pl_module.task, prediction.float(), batch[1]).tolist()  # on the model's device
        outputs, targets = prediction.float().cpu(), batch[1].cpu()
        indices = _indices(batch_indices, sum(len(p[0]) for p in self._parts), len(outputs))
        samples = _samples_of(trainer, dataloader_idx)
        keys = [str(samples[i][0]) if samples is not None else str(batch[2][r]) if len(batch) > 2 else str(i)
                for r, i in enumerate(indices)]  # fmt: skip
        self._parts.append((indices, outputs, targets, keys))
        for row, loss in enumerate(losses):
            item = (loss, indices[row], keys[row], batch[0][row].detach().cpu())
            (heapq.heappush if len(self._worst) < self.keep else heapq.heappushpop)(self._worst, item)

    def gathered(self) -> dict[str, Any] | None:
        """On rank 0: ``{outputs, targets, keys, worst}`` of all processes, in sample order; None elsewhere."""
        mine = (self._parts, self._worst)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, mine)
            if torch.distributed.get_rank() != 0:
                return None
        else:
            parts = [mine]
        rows = sorted((i, rank, o, t, k) for rank, (chunks, _) in enumerate(parts) for ids, outs, tgts, keys in chunks
                      for i, o, t, k in zip(ids, outs, tgts, keys, strict=True))  # fmt: skip
        if not rows:
            raise DataError("vitkit report: the split has no images.")
        worst = heapq.nlargest(self.keep, (w for _, kept in parts for w in kept), key=lambda w: w[0])
        return {
            "outputs": torch.stack([r[2] for r in rows]),
            "targets": torch.stack([torch.as_tensor(r[3]) for r in rows]),
            "keys": [r[4] for r in rows],
            "worst": worst,
        }


def sample_losses(task: Any, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, how wrong the (calibrated) prediction is: cross-entropy, summed label BCE, or squared error in
    standard deviations."""
    if isinstance(task, Classification):
        return F.nll_loss(task.predict(outputs).clamp_min(1e-12).log(), targets.long(), reduction="none")
    if isinstance(task, MultiLabel):
        return F.binary_cross_entropy(task.predict(outputs), targets.float(), reduction="none").sum(-1)
    scaled = (task.predict(outputs) - targets.float().view_as(outputs)) / task.std
    return scaled.pow(2).sum(-1)


def collect(trainer: L.Trainer, model: Any, datamodule: Any, split: str, ckpt_path: str | None, keep: int) -> Any:
    """Run ``model`` over ``split`` of ``datamodule`` (raw head outputs); the gathered results on rank 0."""
    collector = OutputCollector(keep)
    trainer.callbacks.append(collector)
    datamodule.predict_split, model.predict_output = split, "logits"
    try:
        trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
    finally:
        trainer.callbacks.remove(collector)
        datamodule.predict_split, model.predict_output = None, "task"
    return collector.gathered()


def analyse(task: Any, outputs: torch.Tensor, targets: torch.Tensor, temperature: float | None) -> dict[str, Any]:
    """The report's numbers for one split (JSON-ready), plus arrays for the figures under ``_arrays``."""
    names = task.names
    if not isinstance(task, (Classification, MultiLabel)):
        predictions = task.predict(outputs)
        targets = targets.float().view_as(predictions)
        per_target = {
            name: {"mae": float(mean_absolute_error(predictions[:, i], targets[:, i])),
                   "rmse": float(mean_squared_error(predictions[:, i], targets[:, i], squared=False)),
                   "r2": float(r2_score(predictions[:, i], targets[:, i])) if len(targets) > 1 else float("nan")}
            for i, name in enumerate(names)
        }  # fmt: skip
        return {"samples": len(targets), "per_target": per_target, "calibration": None,
                "_arrays": {"predictions": predictions, "targets": targets}}  # fmt: skip
    multilabel = isinstance(task, MultiLabel)
    n = len(names)
    before = outputs.sigmoid() if multilabel else outputs.softmax(-1)
    after = (outputs / temperature).sigmoid() if multilabel else (outputs / temperature).softmax(-1)
    if multilabel:
        targets = targets.round().long()
        thresholds = task.thresholds.cpu()
        hard = (after >= thresholds).long()
        stats = C.multilabel_stat_scores(hard, targets, n, average=None)
        overall = {"map": float(C.multilabel_average_precision(after, targets, n, average="macro")),
                   "f1_micro": float(C.multilabel_f1_score(hard, targets, n, average="micro")),
                   "f1_macro": float(C.multilabel_f1_score(hard, targets, n, average="macro"))}  # fmt: skip
        curves = C.multilabel_precision_recall_curve(after, targets, n)
        ap = C.multilabel_average_precision(after, targets, n, average=None)
    else:
        targets = targets.long()
        stats = C.multiclass_stat_scores(after, targets, n, average=None)
        confusion = C.multiclass_confusion_matrix(after, targets, n)
        overall = {"acc": float(C.multiclass_accuracy(after, targets, n, average="micro")),
                   "balanced_acc": float(C.multiclass_accuracy(after, targets, n, average="macro")),
                   "f1_macro": float(C.multiclass_f1_score(after, targets, n, average="macro"))}  # fmt: skip
        curves = C.multiclass_precision_recall_curve(after, targets, n)
        ap = C.multiclass_average_precision(after, targets, n, average=None)
    tp, fp, fn, support = stats[:, 0].float(), stats[:, 1].float(), stats[:, 3].float(), stats[:, 4]
    precision, recall = tp / (tp + fp).clamp_min(1), tp / (tp + fn).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i]), "average_precision": float(ap[i])}
                 for i, name in enumerate(names)}  # fmt: skip
    section: dict[str, Any] = {"samples": len(targets), "overall": overall, "per_class": per_class}
    section["calibration"] = {
        "temperature": temperature,
        "ece_before": expected_calibration_error(before, targets, multilabel),
        "ece_after": expected_calibration_error(after, targets, multilabel),
        "nll_before": _nll(outputs, targets, 1.0, multilabel),
        "nll_after": _nll(outputs, targets, temperature, multilabel),
    }
    if multilabel:
        section["thresholds"] = dict(zip(names, thresholds.tolist(), strict=True))
    else:
        pairs = [(int(confusion[i, j]), names[i], names[j]) for i in range(n) for j in range(n) if i != j]
        section["most_confused"] = [{"true": t, "predicted": p, "count": c}
                                    for c, t, p in sorted(pairs, key=lambda x: -x[0])[:10] if c > 0]  # fmt: skip
    section["_arrays"] = {"before": before, "after": after, "targets": targets, "curves": curves,
                          "confusion": None if multilabel else confusion}  # fmt: skip
    return section


def _finite(value: Any) -> Any:
    """NaN (a metric of a class without samples) as null, so report.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _nll(outputs: torch.Tensor, targets: torch.Tensor, temperature: float, multilabel: bool) -> float:
    if multilabel:
        return float(F.binary_cross_entropy_with_logits(outputs / temperature, targets.float()))
    return float(F.cross_entropy(outputs / temperature, targets))


def label_errors(task: Any, split: str, section: dict[str, Any], keys: list[str], confidence: float) -> list[dict]:
    """Images whose label the calibrated model contradicts with at least ``confidence``, most confident first."""
    arrays = section["_arrays"]
    if "after" not in arrays:
        return []
    scores, targets, names = arrays["after"], arrays["targets"], task.names
    found = []
    if isinstance(task, MultiLabel):
        for i, j in torch.nonzero((scores - targets.float()).abs() >= confidence).tolist():
            given = "present" if targets[i, j] else "absent"
            found.append({"split": split, "path": keys[i], "label": names[j], "given": given,
                          "model_probability": round(float(scores[i, j]), 4)})  # fmt: skip
        return sorted(found, key=lambda r: -abs(r["model_probability"] - (r["given"] == "present")))
    top, predicted = scores.max(-1)
    for i in torch.nonzero((predicted != targets) & (top >= confidence)).flatten().tolist():
        found.append({"split": split, "path": keys[i], "label": names[int(targets[i])],
                      "predicted": names[int(predicted[i])], "confidence": round(float(top[i]), 4),
                      "label_probability": round(float(scores[i, targets[i]]), 4)})  # fmt: skip
    return sorted(found, key=lambda r: -r["confidence"])


def make_report(trainer: L.Trainer, model: Any, datamodule: Any, ckpt_path: str | None, folder: Path,
                top_losses: int = 16, confidence: float = 0.9) -> Path | None:  # fmt: skip
    """Collect the outputs of every labelled eval split, then (rank 0) write the report files into ``folder``;
    the HTML file's path on rank 0, None on the other processes."""
    require_matplotlib()
    if datamodule is None or not hasattr(datamodule, "has_split"):
        raise DataError("vitkit report needs labelled data: give --data.root DIR (or the checkpoint's data).")
    splits = [split for split in ("val", "test") if datamodule.has_split(split)]
    if not splits:
        datamodule.require_split("val")
    results, source = {}, ckpt_path
    for split in splits:
        results[split] = collect(trainer, model, datamodule, split, ckpt_path, top_losses)
        ckpt_path = None  # the weights are loaded
    if results[splits[0]] is None:
        return None
    from vitkit.report_figures import write_html

    task = model.cpu().task  # Lightning's teardown left it there already
    temperature = float(getattr(task, "temperature", 1.0))
    stored = temperature != 1.0
    if isinstance(task, (Classification, MultiLabel)) and not stored:  # an uncalibrated model: what T would do
        val = results[splits[0]]
        temperature = fit_temperature(val["outputs"], val["targets"], multilabel=isinstance(task, MultiLabel))
    sections, errors = {}, []
    for split, result in results.items():
        sections[split] = analyse(task, result["outputs"], result["targets"], temperature)
        calibration = sections[split]["calibration"]
        if calibration is not None:
            # Which split each number is from: T is fitted on val, so val's "after" is in-sample; its held-out
            # counterpart is the cross-fitted ECE (each fold scaled by a T fitted on the other folds).
            calibration.update(stored_in_checkpoint=stored, fitted_on=splits[0], held_out=split != splits[0])
            if split == splits[0] and temperature != 1.0:
                multilabel = isinstance(task, MultiLabel)
                scores = cross_fitted(result["outputs"], result["targets"], multilabel)
                calibration["ece_after_cross_fitted"] = expected_calibration_error(
                    scores, result["targets"], multilabel
                )
        errors += label_errors(task, split, sections[split], result["keys"], confidence)
        sections[split]["label_errors"] = sum(e["split"] == split for e in errors)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "label_errors.csv").open("w", newline="") as f:
        fields = list(errors[0]) if errors else ["split", "path", "label", "predicted", "confidence"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(errors)
    public = {split: {k: v for k, v in s.items() if not k.startswith("_")} for split, s in sections.items()}
    record = {
        "checkpoint": str(Path(source).resolve()) if source else None,
        "data": datamodule.describe_source() if hasattr(datamodule, "describe_source") else None,
        "task": type(task).__name__.lower(),
        "splits": splits,
        "confidence": confidence,
        **public[splits[0]],
        **({"test": public["test"]} if "test" in public else {}),
    }
    (folder / "report.json").write_text(json.dumps(_finite(record), indent=2) + "\n")
    return write_html(folder / "report.html", model, sections, results, errors, record)


def report_after_fit(trainer: L.Trainer, model: Any, datamodule: Any) -> Path | None:
    """At the end of a fit: the report of the best checkpoint (else of the final weights) in ``<run>/report``,
    also logged to W&B when a W&B logger is on. Skipped, with a warning, without matplotlib."""
    from lightning.pytorch.utilities import rank_zero_warn

    if datamodule is None or not hasattr(datamodule, "has_split") or not hasattr(model, "task"):
        return None
    try:
        require_matplotlib()
    except VitkitError as err:
        rank_zero_warn(f"no report at the end of fit: {err}")
        return None
    if not any(datamodule.has_split(split) for split in ("val", "test")):
        rank_zero_warn("no report at the end of fit: the data has no labelled val or test split to report on.")
        return None
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor and c.best_model_path), None)
    written = make_report(trainer, model, datamodule, best, Path(trainer.default_root_dir) / "report")
    if written is not None:
        from vitkit.callbacks import wandb_loggers_of

        for logger in wandb_loggers_of(trainer):
            import wandb

            run = logger.experiment
            run.log({"report": wandb.Html(written.read_text(encoding="utf-8"), inject=False)})
            for name in ("report.json", "label_errors.csv"):  # copied, as W&B warns about symlinked files
                (Path(run.dir) / name).write_bytes((written.parent / name).read_bytes())
                run.save(str(Path(run.dir) / name), base_path=run.dir, policy="now")
    return written
