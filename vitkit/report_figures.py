"""The pictures of ``vitkit report`` (matplotlib, embedded as base64 PNGs) and its self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.calibration import N_BINS
from vitkit.callbacks import _caption, to_pil
from vitkit.tasks import Classification, MultiLabel

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.5em 0 1.5em}
.low{background:#fdd}h2{border-bottom:2px solid #444;margin-top:2em}small{color:#666}"""


def _figure(columns: int = 1, rows: int = 1, size: tuple[float, float] = (6, 4.5)) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    figure = Figure(figsize=(size[0] * columns, size[1] * rows))
    return figure, figure.subplots(rows, columns, squeeze=False)


def _png(figure: Any) -> str:
    """The figure as an ``<img>`` tag with the PNG inline."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def confusion_figure(confusion: torch.Tensor, names: list[str]) -> str:
    n = len(names)
    figure, axes = _figure(size=(max(5, 0.5 * n + 3), max(4, 0.5 * n + 2)))
    ax = axes[0, 0]
    shares = confusion.float() / confusion.sum(1, keepdim=True).clamp_min(1)
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="confusion matrix (row shares)")
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                colour = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", color=colour, fontsize=8)
    return _png(figure)


def pr_figure(curves: Any, names: list[str], per_class: dict[str, Any], thresholds: dict | None) -> str:
    """Precision-recall curve per class (one-vs-rest) or label; the 12 with the lowest AP when there are more."""
    figure, axes = _figure(size=(7, 5))
    ax = axes[0, 0]
    order = sorted(range(len(names)), key=lambda i: per_class[names[i]]["average_precision"] or 0)[:12]
    for i in order:
        precision, recall, cut = curves[0][i], curves[1][i], curves[2][i]
        ap = per_class[names[i]]["average_precision"]
        line = ax.plot(recall.numpy(), precision.numpy(), label=f"{names[i]} (AP {ap:.2f})")[0]
        if thresholds is not None and len(cut):
            at = int(torch.searchsorted(cut, torch.tensor(thresholds[names[i]])).clamp(max=len(cut) - 1))
            ax.plot([recall[at]], [precision[at]], "o", color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="precision-recall")
    ax.legend(fontsize=7, loc="lower left")
    return _png(figure)


def reliability_figure(before: torch.Tensor, after: torch.Tensor, targets: torch.Tensor, multilabel: bool,
                       calibration: dict[str, Any]) -> str:  # fmt: skip
    """Accuracy against confidence in equal-width bins, before and after temperature scaling."""
    figure, axes = _figure(columns=2, size=(5, 4.5))
    titles = (f"before (ECE {calibration['ece_before']:.3f})",
              f"after T={calibration['temperature']:.3g} (ECE {calibration['ece_after']:.3f})")  # fmt: skip
    edges = np.linspace(0, 1, N_BINS + 1)
    for ax, scores, title in zip(axes[0], (before, after), titles, strict=True):
        if multilabel:
            confidence, correct = scores.flatten().numpy(), targets.flatten().float().numpy()
        else:
            top, predicted = scores.max(-1)
            confidence, correct = top.numpy(), (predicted == targets).float().numpy()
        bins = np.clip(np.digitize(confidence, edges[1:-1]), 0, N_BINS - 1)
        counts = np.bincount(bins, minlength=N_BINS)
        hits = np.bincount(bins, weights=correct, minlength=N_BINS) / np.maximum(counts, 1)
        ax.bar(edges[:-1], np.where(counts > 0, hits, 0), width=1 / N_BINS, align="edge", edgecolor="k", alpha=0.7)
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        what = "label probability" if multilabel else "confidence (top class)"
        ax.set(xlabel=what, ylabel="fraction positive" if multilabel else "accuracy", title=title, xlim=(0, 1))
        ax.legend(fontsize=7, loc="upper left")
    return _png(figure)


def regression_figure(predictions: torch.Tensor, targets: torch.Tensor, names: list[str]) -> str:
    """Per target: predicted against true, and residuals against true."""
    figure, axes = _figure(columns=2, rows=len(names), size=(5, 4))
    for i, name in enumerate(names):
        true, predicted = targets[:, i].numpy(), predictions[:, i].numpy()
        low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        axes[i, 0].scatter(true, predicted, s=8)
        axes[i, 0].plot([low, high], [low, high], "r--")
        axes[i, 0].set(xlabel=f"true {name}", ylabel=f"predicted {name}", title=f"{name}: predicted vs true")
        axes[i, 1].scatter(true, predicted - true, s=8)
        axes[i, 1].axhline(0, color="r", linestyle="--")
        axes[i, 1].set(xlabel=f"true {name}", ylabel="residual (predicted - true)", title=f"{name}: residuals")
    return _png(figure)


def top_losses_figure(model: Any, worst: list[tuple], targets: dict[str, Any]) -> str:
    """The highest-loss images with their attention rollout, captioned with prediction (p) and label (t)."""
    from vitkit.explain import attention_maps, overlay

    images = torch.stack([item[3] for item in worst])
    try:
        outputs, maps = attention_maps(model, images)
    except ValueError:  # not a ViT: the images alone
        outputs, maps = model(images).detach(), None
    predictions = model.task.predict(outputs)
    columns = min(4, len(worst))
    figure, axes = _figure(columns=columns, rows=-(-len(worst) // columns), size=(3, 3.4))
    for ax in axes.flat:
        ax.axis("off")
    for i, ((loss, _, key, image), prediction) in enumerate(zip(worst, predictions, strict=True)):
        picture = to_pil(image, model.data_config)
        if maps is not None:
            picture = overlay(np.asarray(picture), maps[i].numpy(), 0.45, min_size=160)
        ax = axes.flat[i]
        ax.imshow(picture)
        truth = _caption(model.task.describe_target(targets.get(key)))
        ax.set_title(f"p: {_caption(model.task.describe(prediction))[:34]}\nt: {truth[:34]}\nloss {loss:.2f} "
                     f"{Path(key).name[:24]}", fontsize=8)  # fmt: skip
    return _png(figure)


def _table(header: list[str], rows: list[list[Any]], low: int | None = None) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=low" if i == low and isinstance(v, float) and v < 0.5 else ""}>{cell(v)}</td>'
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(model: Any, split: str, section: dict[str, Any], result: dict[str, Any]) -> str:
    task, names, arrays = model.task, model.task.names, section["_arrays"]
    parts = [f"<h2>{split} split: {section['samples']} images</h2>"]
    if "per_target" in section:
        rows = [[name, v["mae"], v["rmse"], v["r2"]] for name, v in section["per_target"].items()]
        parts += [_table(["target", "MAE", "RMSE", "R²"], rows),
                  regression_figure(arrays["predictions"], arrays["targets"], names)]  # fmt: skip
    else:
        multilabel = isinstance(task, MultiLabel)
        parts.append(_table(list(section["overall"]), [list(section["overall"].values())]))
        header = ["label" if multilabel else "class", "precision", "recall", "F1", "support", "AP"]
        rows = [[name, v["precision"], v["recall"], v["f1"], v["support"], v["average_precision"]]
                for name, v in section["per_class"].items()]  # fmt: skip
        if multilabel:
            header.append("threshold")
            rows = [[*row, section["thresholds"][row[0]]] for row in rows]
        parts.append(_table(header, rows, low=3))
        if isinstance(task, Classification):
            parts.append(confusion_figure(arrays["confusion"], names))
            pairs = [[p["true"], p["predicted"], p["count"]] for p in section["most_confused"]]
            parts += ["<h3>most confused pairs</h3>", _table(["true", "predicted as", "images"], pairs)]
        parts.append(pr_figure(arrays["curves"], names, section["per_class"], section.get("thresholds")))
        c = section["calibration"]
        where = "stored in the checkpoint" if c["stored_in_checkpoint"] else "fitted for this report only"
        if c["held_out"]:
            scope = f"held out: nothing was fitted on the {split} split"
        else:
            crossed = c.get("ece_after_cross_fitted")
            scope = f"in-sample: the temperature was fitted on this {split} split" + (
                f"; held-out estimate (5-fold cross-fitted) ECE after {crossed:.4f}" if crossed is not None else ""
            )
        parts += [f"<h3>calibration</h3><p>temperature {c['temperature']:.4g} (fitted on {c['fitted_on']}, {where});"
                  f" on {split} ({scope}): expected calibration error {c['ece_before']:.4f} before,"
                  f" {c['ece_after']:.4f} after; NLL {c['nll_before']:.4f} before, {c['nll_after']:.4f} after.</p>",
                  reliability_figure(arrays["before"], arrays["after"], arrays["targets"], multilabel, c)]  # fmt: skip
    if result["worst"]:
        targets = {k: t for k, t in zip(result["keys"], result["targets"].tolist(), strict=True)}
        parts += ["<h3>top losses (attention rollout over the image as the model sees it)</h3>",
                  top_losses_figure(model, result["worst"], targets)]  # fmt: skip
    return "\n".join(parts)


def write_html(path: Path, model: Any, sections: dict[str, Any], results: dict[str, Any], errors: list[dict],
               record: dict[str, Any]) -> Path:  # fmt: skip
    """``report.html``: every split's tables and pictures, and the suspected label errors."""
    body = [f"<h1>vitkit report</h1><p>checkpoint <code>{html.escape(str(record['checkpoint']))}</code>, "
            f"task {record['task']}, {len(model.task.names)} outputs.</p>"]  # fmt: skip
    body += [_section(model, split, section, results[split]) for split, section in sections.items()]
    body.append(f"<h2>suspected label errors: {len(errors)}</h2><p>Images whose label the model contradicts with "
                f"calibrated confidence &ge; {record['confidence']}: review them (all in "
                '<a href="label_errors.csv">label_errors.csv</a>).</p>')  # fmt: skip
    if errors:
        body.append(_table(list(errors[0]), [list(e.values()) for e in errors[:30]]))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>vitkit report</title><style>{_STYLE}</style>"
    path.write_text(page + "</head><body>" + "\n".join(body) + "</body></html>\n", encoding="utf-8")
    return path
