"""Search spaces of `vitkit tune --mode sweep` (vitkit.sweep_space) and the LR finder's suggestion rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.errors import DataError
from vitkit.sweep_space import SWEEPS_DIR, Dimension, load_space, resolve_key, sweep_path, with_values


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_space_file_gives_ranges_choices_and_fixed_values(tmp_path):
    dims, fixed = load_space(
        write(
            tmp_path,
            "model.optimizer.init_args.lr: loguniform 1e-5 1e-2\n"
            "model.head.init_args.dropout: uniform 0 0.3\n"
            "trainer.accumulate_grad_batches: int 1 4\n"
            "model.finetune.init_args.layer_decay: [0.65, 0.75]\n"
            "model.finetune: vitkit.FineTuning\n"
            "trainer.max_epochs: 3\n",
        )
    )
    assert dims == {
        "model.optimizer.init_args.lr": Dimension("loguniform", 1e-5, 1e-2),
        "model.head.init_args.dropout": Dimension("uniform", 0.0, 0.3),
        "trainer.accumulate_grad_batches": Dimension("int", 1, 4),
        "model.finetune.init_args.layer_decay": Dimension("choice", choices=(0.65, 0.75)),
    }
    assert fixed == {"model.finetune": "vitkit.FineTuning", "trainer.max_epochs": 3}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a.b: loguniform 1e-2\n", "needs two numbers"),
        ("a.b: loguniform 0 1\n", "LOW > 0"),
        ("a.b: uniform 2 1\n", "LOW must be below HIGH"),
        ("a.b: int 1 2.5\n", "whole numbers"),
        ("a.b: logunifrom 1e-5 1e-2\n", "unknown distribution 'logunifrom'"),
        ("a.b: []\n", "empty list of choices"),
        ("a.b: [1\n", "not valid YAML"),
        ("trainer.max_epochs: 3\n", "nothing to search"),
        ("- a\n", "expected recipe keys"),
    ],
)
def test_a_space_that_does_not_parse_is_one_line_naming_the_file_and_key(tmp_path, text, says):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=says) as error:
        load_space(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_keys_resolve_through_init_args_and_unknown_keys_suggest_the_close_one():
    recipe = {"model": {"optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}, "finetune": None}}
    assert resolve_key(recipe, "model.optimizer.lr", "space") == "model.optimizer.init_args.lr"
    assert with_values(recipe, {"model.optimizer.init_args.lr": 0.1})["model"]["optimizer"]["init_args"]["lr"] == 0.1
    assert recipe["model"]["optimizer"]["init_args"]["lr"] == 1e-3  # a copy
    with pytest.raises(DataError, match=r"model.optimizer.init_args.learning_rate is not a key of the recipe \(did you"
                       r" mean model.optimizer.init_args.lr\?\)"):  # fmt: skip
        resolve_key(recipe, "model.optimizer.init_args.learning_rate", "space")
    with pytest.raises(DataError, match=r"model\.finetune is null in the recipe"):
        resolve_key(recipe, "model.finetune.init_args.layer_decay", "space")


def test_sweep_names_a_shipped_space_or_a_file(tmp_path):
    assert sweep_path("quickstart") == SWEEPS_DIR / "quickstart.yaml"
    load_space(sweep_path("quickstart"))  # the shipped space parses
    own = write(tmp_path, "a.b: [1, 2]\n")
    assert sweep_path(str(own)) == own
    with pytest.raises(DataError, match="no such file or shipped search space"):
        sweep_path(str(tmp_path / "missing.yaml"))


def test_trials_that_log_to_wandb_join_the_sweeps_group(tmp_path):
    from jsonargparse import Namespace

    from vitkit.loggers import configure_loggers
    from vitkit.trials import _join_group

    logger = Namespace(class_path="vitkit.loggers.WandbLogger", init_args=Namespace(project="vitkit"))
    csv = Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace())
    config = configure_loggers([logger, csv], tmp_path / "trial_000", None, "quickstart/version_0/trial_000")
    _join_group(config, "quickstart/version_0")
    assert config[0].init_args.group == "quickstart/version_0" and "group" not in config[1].init_args
    assert config[0].init_args.quiet is True  # no W&B run history printed after every trial
    assert config[0].init_args.save_dir == str(tmp_path / "trial_000")
    assert config[0].init_args.name == "quickstart/version_0/trial_000"  # the run's name, not the logger's class
