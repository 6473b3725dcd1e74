"""``vitkit publish``: a trained model in timm's Hugging Face hub layout (``config.json``, ``model.safetensors``,
``README.md``), which ``timm.create_model("local-dir:DIR", pretrained=True)`` or ``"hf-hub:user/name"`` loads with
nothing but timm.

The published model is a plain timm classifier whose outputs are the task's calibrated logits: the calibration
temperature (classification, multi-label) or the training targets' mean/std (regression) is folded into its last
linear layer, so ``softmax`` / ``sigmoid`` of timm's output (or the output itself, for regression) is what ``vitkit
predict`` writes. timm's ViT has a single linear classifier, so the head must be linear (``vitkit.LinearHead`` or
``MLPHead`` with ``hidden_dims: []``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.tasks import Classification, MultiLabel, Regression

#: What a user does with the published model's output, per task.
READ_OUT = {
    "classification": "softmax of the logits: calibrated class probabilities",
    "multilabel": "sigmoid of the logits: calibrated label probabilities; a label is present from its threshold",
    "regression": "the logits are the values, in the training targets' units",
}


#: The same, as code applied to the output.
READ_OUT_CODE = {"classification": ".softmax(-1)", "multilabel": ".sigmoid()", "regression": ""}


def final_linear(head: nn.Module) -> nn.Linear:
    """The head's one linear layer; an error when the head has hidden layers (timm's classifier is one layer)."""
    passive = (nn.Sequential, nn.Dropout, nn.Identity)
    layers = [m for m in head.modules() if m is not head and not isinstance(m, passive)]
    if len(layers) == 1 and isinstance(layers[0], nn.Linear):
        return layers[0]
    raise VitkitError(
        f"vitkit publish: the model's head ({type(head).__name__} with {len(layers)} layers) is not one linear layer, "
        "and timm's classifier is; train with --model.head.class_path vitkit.LinearHead (or MLPHead with "
        "--model.head.init_args.hidden_dims []), or deploy this model with vitkit export."
    )


def calibrated_classifier(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a linear layer computing the task's calibrated logits (or values in their units)."""
    linear, task = final_linear(model.head), model.task
    weight, bias = linear.weight.detach().float().clone(), linear.bias.detach().float().clone()
    if isinstance(task, (Classification, MultiLabel)):
        temperature = float(task.temperature)
        return weight / temperature, bias / temperature
    if isinstance(task, Regression):
        std, mean = task.std.float(), task.mean.float()
        return weight * std[:, None], bias * std + mean
    raise VitkitError(f"vitkit publish: no timm form for task {type(task).__name__}; use vitkit export.")


def timm_model(model: nn.Module) -> nn.Module:
    """A timm model (``model``'s backbone architecture with a classifier) computing its calibrated outputs."""
    import timm

    backbone = model.backbone
    weight, bias = calibrated_classifier(model)
    created = timm.create_model(backbone.model_name, pretrained=False, num_classes=weight.shape[0],
                                **backbone.model_kwargs)  # fmt: skip
    missing, unexpected = created.load_state_dict(backbone.model.state_dict(), strict=False)
    if unexpected or any(not k.startswith(created.default_cfg.get("classifier", "head")) for k in missing):
        raise VitkitError(f"vitkit publish: timm's {backbone.model_name} does not take this backbone's weights "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]}); use vitkit export.")  # fmt: skip
    classifier = created.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)
    return created.eval()


def publish_model(model: nn.Module, output: str | Path, ckpt_path: str | Path | None = None) -> Path:
    """Write ``model`` (a trained :class:`~vitkit.module.TransferModule`) into ``output`` in timm's hub layout,
    with a model card drawn from its checkpoint's run folder (recipe, report); return the folder."""
    from timm.models import save_for_hf

    from vitkit.checkpoints import current_umask

    output = Path(output)
    model = model.float().eval().cpu()
    created = timm_model(model)
    task = model.task
    info = {k: v for k, v in task.export_info().items() if k not in ("outputs",)}
    info["outputs"] = READ_OUT.get(info["task"])
    config = model.data_config
    data_config = {"input_size": tuple(config["input_size"]), "mean": tuple(config["mean"]),
                   "std": tuple(config["std"]), "interpolation": config.get("interpolation"),
                   "crop_pct": config.get("crop_pct"), "crop_mode": config.get("crop_mode")}  # fmt: skip
    data_config = {k: v for k, v in data_config.items() if v is not None}
    model_config = {"label_names": list(task.names), "vitkit": info}
    save_for_hf(created, str(output), model_config=model_config, safe_serialization=True, data_config=data_config)
    hub_config = json.loads((output / "config.json").read_text())
    for key in ("tag", "hf_hub_id", "license"):  # the timm weights' origin, not this model's
        hub_config["pretrained_cfg"].pop(key, None)
    (output / "config.json").write_text(json.dumps(hub_config, indent=2) + "\n")
    card = model_card(model, hub_config, ckpt_path)
    (output / "README.md").write_text(card)
    mask = current_umask()
    for path in output.iterdir():  # safetensors writes model.safetensors private (0600); a folder to share is not
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)
    return output


def run_folder(ckpt_path: str | Path | None) -> Path | None:
    """The run folder of a checkpoint in ``<run>/checkpoints/``, else None."""
    path = Path(ckpt_path) if ckpt_path else None
    return path.parent.parent if path is not None and path.parent.name == "checkpoints" else None


def model_card(model: nn.Module, config: dict[str, Any], ckpt_path: str | Path | None) -> str:
    """A Hugging Face model card: task, labels, data, recipe, per-class metrics and calibration, intended use."""
    from vitkit.checkpoints import read_checkpoint

    task, names = config["vitkit"]["task"], config["label_names"]
    checkpoint = read_checkpoint(ckpt_path, mmap=True) if ckpt_path and Path(ckpt_path).is_file() else {}
    run = run_folder(ckpt_path)
    recipe = run / "config.yaml" if run else None
    report_file = run / "report" / "report.json" if run else None
    report = json.loads(report_file.read_text()) if report_file and report_file.is_file() else None
    stats = checkpoint.get("hyper_parameters", {}).get("label_stats") or {}
    data = (checkpoint.get("vitkit") or {}).get("data")
    pipeline = "image-classification" if task != "regression" else "image-feature-extraction"
    lines = ["---", "library_name: timm", "tags: [image-classification, timm, vitkit]", f"pipeline_tag: {pipeline}",
             "---", "", f"# {config['architecture']} fine-tuned with vitkit ({task})", "",
             f"A `{config['architecture']}` ({config.get('model_args', {})}) trained with vitkit for **{task}** of "
             f"{len(names)} {'targets' if task == 'regression' else 'labels' if task == 'multilabel' else 'classes'}."
             f" Its outputs: {config['vitkit']['outputs']}.", "", "## Use", "", "```python", "import timm, torch",
             'model = timm.create_model("hf-hub:USER/NAME", pretrained=True).eval()  # or "local-dir:THIS_FOLDER"',
             "config = timm.data.resolve_data_config({}, model=model)",
             "transform = timm.data.create_transform(**config)",
             f"outputs = model(transform(image).unsqueeze(0)){READ_OUT_CODE[task]}", "```", "",
             f"Input: {config['pretrained_cfg']['input_size']} RGB, mean {config['pretrained_cfg']['mean']}, std "
             f"{config['pretrained_cfg']['std']}, crop_pct {config['pretrained_cfg'].get('crop_pct')}.", "",
             "## Labels", "", ", ".join(f"`{n}`" for n in names), ""]  # fmt: skip
    if task == "multilabel":
        lines += [f"Thresholds (a label is present from): {config['vitkit'].get('thresholds')}", ""]
    lines += ["## Training data", "", f"Data: `{json.dumps(data)}`" if data else "Data: not recorded.", ""]
    if stats.get("class_counts"):
        lines += ["Training images per class: " + ", ".join(f"{n} {c:g}" for n, c in zip(names, stats["class_counts"],
                                                                                     strict=False)), ""]  # fmt: skip
    if recipe is not None and recipe.is_file():
        lines += ["## Recipe", "", "```yaml", recipe.read_text().strip(), "```", ""]
    lines += ["## Evaluation", ""]
    if report:
        lines += [f"On the {report.get('splits', ['val'])[0]} split of the training run (vitkit report).", ""]
        if report.get("overall"):
            lines += ["Overall: " + ", ".join(f"{k} {v:.4g}" for k, v in report["overall"].items()
                                              if isinstance(v, (int, float))), ""]  # fmt: skip
        per_class = report.get("per_class") or report.get("per_target") or {}
        if per_class:
            columns = list(next(iter(per_class.values())))
            lines += ["| class | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(_cell(values.get(c)) for c in columns) + " |"
                      for name, values in per_class.items()]  # fmt: skip
            lines.append("")
        if report.get("calibration"):
            lines += ["Calibration: " + ", ".join(f"{k} {_cell(v)}" for k, v in report["calibration"].items()), ""]
    else:
        lines += ["No `vitkit report` was found beside the checkpoint.", ""]
    lines += ["## Intended use and limits", "",
              "Made for images like its training data (see above); its scores were calibrated on that data's "
              "validation split and may be over-confident on other kinds of images. Check it on your own labelled "
              "images before relying on it; it was not evaluated for fairness or safety-critical use.", ""]  # fmt: skip
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def push_folder(folder: Path, repo_id: str) -> str:
    """Upload ``folder`` to the Hugging Face hub repo ``repo_id`` (created if needed); its URL. One line on failure."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="vitkit publish")
    except Exception as err:  # offline, no token, no rights: the hub's reason in one line, never a traceback
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise VitkitError(
            f"--push_to {repo_id}: upload failed ({type(err).__name__}: {reason}); the model is in {folder}: log in "
            "with `hf auth login` and check the network, then run again."
        ) from None
    return f"https://huggingface.co/{repo_id}"
