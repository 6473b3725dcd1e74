"""Before ``fit --ckpt_path`` writes anything: the checkpoint, the recipe's model and the data must agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from vitkit.errors import VitkitError


def check_resumable(
    ckpt_path: str | Path, hparams: dict[str, Any], recipe_task: Any, datamodule: L.LightningDataModule
) -> None:
    """Raise one line naming every disagreement between the checkpoint, the recipe and the data.

    - the data's classes (folders, labels, target columns) must be the checkpoint's, in order;
    - the recipe's task (classification, regression, ...), ``recipe_task``, must be the checkpoint's (Lightning
      builds the model from the checkpoint's config whatever the recipe says: a different task would be ignored).
    """
    problems = []
    saved_names = hparams.get("class_names")
    names = getattr(datamodule, "class_names", None)
    if saved_names is not None and names is not None and list(names) != list(saved_names):
        problems.append(f"the data's classes {_few(names)} differ from the checkpoint's {_few(saved_names)}")
    saved_task, task = _class_path(hparams.get("task")), _class_path(recipe_task)
    if saved_task and task and saved_task != task:
        problems.append(f"the recipe's task is {task}, the checkpoint's {saved_task}")
    if problems:
        raise VitkitError(
            f"--ckpt_path {ckpt_path}: {'; '.join(problems)}. Resume a run with its own recipe and data (its "
            "config.yaml: --config RUN/config.yaml), or start a new run from its encoder with "
            f"--model.backbone.init_args.weights {ckpt_path}."
        )


def _class_path(config: Any) -> str | None:
    """A task config's class name: ``Classification`` for ``{class_path: vitkit.Classification, ...}``."""
    path = config.get("class_path") if isinstance(config, dict) else config if isinstance(config, str) else None
    return str(path).rsplit(".", 1)[-1] if path else None


def _few(names: list[str], at_most: int = 6) -> str:
    """A list of names, cut after ``at_most``."""
    names = [str(n) for n in names]
    return str(names) if len(names) <= at_most else f"[{', '.join(names[:at_most])}, ... ({len(names)} in all)]"
