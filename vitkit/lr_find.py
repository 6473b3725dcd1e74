"""``vitkit tune --mode lr``: Lightning's LR range test (``Tuner.lr_find``) on the model as the recipe builds it.

The test runs on the recipe's fine-tuning strategy's parameter groups, frozen parts frozen. Lightning's finder ramps
every group to the same LR; vitkit keeps each group's ``lr_scale`` (layer decay) during the test, so the ramp's LR,
the plot's x axis and the suggestion are the optimizer's base LR, the value ``--model.optimizer.init_args.lr``
sets. The recipe's LR schedule (warm-up, cosine) is not part of the test. The loss is recorded per step and smoothed
here (Lightning's smoothed copy corrects its running average's start-up bias one step late, which draws the first
steps' loss too low).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.tuner import Tuner
from torch.optim import Optimizer

from vitkit.errors import VitkitError
from vitkit.tune import _recipe_lr, _require, _shown, lr_flags

#: The running average's weight of the past (Lightning's finder uses the same).
BETA = 0.98


class LossRecorder:
    """Wraps ``model.training_step`` to record the training loss of every optimizer step, as Lightning's finder
    counts them (it runs with its own callback only, and keeps a smoothed copy)."""

    def __init__(self, model: L.LightningModule) -> None:
        self.model, self.step, self.losses = model, model.training_step, []

    def __enter__(self) -> LossRecorder:
        def training_step(*args: Any, **kwargs: Any) -> Any:
            output = self.step(*args, **kwargs)
            trainer = self.model.trainer
            if (trainer.fit_loop.batch_idx + 1) % trainer.accumulate_grad_batches == 0:
                loss = output.get("loss") if isinstance(output, dict) else output
                self.losses.append(float(loss.detach()) if loss is not None else float("nan"))
            return output

        self.model.training_step = training_step
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.training_step  # the class's method again


def smoothed(losses: list[float], beta: float = BETA) -> list[float]:
    """The bias-corrected running average of ``losses`` (NaNs skipped, and kept as NaN)."""
    out, average, count = [], 0.0, 0
    for loss in losses:
        if not math.isfinite(loss):
            out.append(float("nan"))
            continue
        count += 1
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**count))
    return out


def find_lr(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    steps: int = 100,
) -> float:
    """Lightning's LR range test on ``model``, each parameter group at its own ``lr_scale``; writes ``lr_find.png``
    and ``lr_find.json`` into ``trainer.default_root_dir`` and prints the flag to paste. Returns the suggested LR."""
    if not 0 < min_lr < max_lr:
        raise VitkitError(f"--min_lr {min_lr} and --max_lr {max_lr}: expected 0 < min_lr < max_lr.")
    _require("matplotlib", "the LR plot")
    recipe_lr = _recipe_lr(model)
    # Enough epochs for `steps` steps on the smallest data (the recipe's epochs may be fewer); the finder stops itself.
    trainer.fit_loop.max_epochs = max(trainer.max_epochs or 0, steps)
    # The test tracks the training loss only: no validation between its epochs (small data has many).
    validate_every, trainer.check_val_every_n_epoch = trainer.check_val_every_n_epoch, trainer.max_epochs + 1
    original, handles = model.optimizer_factory, []

    def factory(params: Any) -> Optimizer:
        optimizer = original(params)
        handles.extend(_keep_group_scales(optimizer))
        return optimizer

    model.optimizer_factory = factory
    try:
        with LossRecorder(model) as recorder:
            finder = Tuner(trainer).lr_find(model, datamodule=datamodule, min_lr=min_lr, max_lr=max_lr,
                                            num_training=steps, update_attr=False)  # fmt: skip
    finally:
        model.optimizer_factory, trainer.check_val_every_n_epoch = original, validate_every
        for handle in handles:
            handle.remove()
    lrs = finder.results["lr"] if finder is not None else []
    losses = smoothed(recorder.losses[: len(lrs)])
    suggestion = valley(lrs, losses)
    if suggestion is None:
        raise VitkitError(
            f"the LR range test took too few steps to suggest an LR ({len(lrs)} of --lr_steps {steps}): the loss "
            "diverged early (lower --max_lr), --lr_steps is too low, or the data is too small."
        )
    if trainer.is_global_zero:
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"suggestion": suggestion, "recipe_lr": recipe_lr, "lr": lrs, "loss": losses}
        (folder / "lr_find.json").write_text(json.dumps(record, indent=1) + "\n")
        plot = _plot_lr(lrs, losses, suggestion, recipe_lr, folder / "lr_find.png")
        stopped = f" (stopped at {lrs[-1]:.1e}: the loss diverged)" if len(lrs) < steps else ""
        print(
            f"LR range test: {len(lrs)} steps from {min_lr:.0e} to {max_lr:.0e}{stopped}\n"
            f"suggested learning rate: {suggestion:.1e} (valley of the loss curve; the recipe's: {recipe_lr:.1e})\n"
            f"  {lr_flags(model, suggestion)}\n"
            f"plot: {_shown(plot)}",
            flush=True,
        )
    return suggestion


def valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's ``valley`` rule: the LR in the middle of the longest run over which the loss keeps falling.

    The longest decreasing subsequence of the (smoothed) loss spans the "valley" from the first steps that learn
    to the minimum; the suggestion lies 1/3 + 1/6 of the way along it, as in fastai's ``lr_find(suggest_funcs=valley)``.
    A slope rule (steepest descent) picks whatever the first steps' noise makes steep: on real photographs it
    suggested 5.9e-07, where the loss fell steadily from 1e-5 to 1e-3 (benchmarks/RESULTS.md, "quality").
    ``None`` with fewer than 3 finite points."""
    points = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if len(points) < 3:
        return None
    values = [loss for _, loss in points]
    n, longest = len(values), [1] * len(values)
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end, start = i, i - longest[i]
    sections = (end - start) / 3
    return points[start + int(sections) + int(sections / 2)][0]


def _keep_group_scales(optimizer: Optimizer) -> list[Any]:
    """Step hooks running each parameter group at the finder's LR times the group's ``lr_scale`` (layer decay)."""
    saved: list[float] = []

    def scale(opt: Optimizer, args: Any, kwargs: Any) -> None:
        saved[:] = [group["lr"] for group in opt.param_groups]
        for group in opt.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)

    def restore(opt: Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in zip(opt.param_groups, saved, strict=True):
            group["lr"] = lr

    return [optimizer.register_step_pre_hook(scale), optimizer.register_step_post_hook(restore)]


def _plot_lr(lrs: list[float], losses: list[float], suggestion: float, recipe_lr: float, path: Path) -> Path:
    """Loss vs LR on a log scale, the suggestion marked, with the recipe's LR for comparison, as a PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(lrs, losses)
    axes.set_xscale("log")
    axes.plot(suggestion, losses[lrs.index(suggestion)], "o", color="red", markersize=8,
              label=f"suggested {suggestion:.1e}")  # fmt: skip
    axes.axvline(recipe_lr, color="gray", linestyle=":", linewidth=1, label=f"recipe {recipe_lr:.1e}")
    axes.set_xlabel("learning rate (base LR; groups keep their lr_scale)")
    axes.set_ylabel("training loss (smoothed)")
    axes.legend()
    figure.savefig(path, dpi=100)
    return path
