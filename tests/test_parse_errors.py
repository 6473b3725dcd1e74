"""Mistyped options and values on the command line: one line naming the option, what it takes and what it got."""

from __future__ import annotations

import pytest

from tests.helpers import vitkit

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["fit", "--config", "quickstart", "--data.root", "x", "--data.init_args.sampler", "balance"],
         "vitkit: error: --data.sampler: expected one of 'none', 'balanced' or null, got 'balance'."),
        (["tune", "--config", "quickstart", "--data.root", "x", "--mode", "lrr"],
         "vitkit: error: --mode: expected one of 'lr', 'batch_size', 'sweep', got 'lrr'."),
        (["fit", "--config", "multilabel", "--data.root", "x"],
         "vitkit: error: --data.root: vitkit.ManifestDataModule has no argument 'root' (a manifest's data is "
         "re-pointed with --data.csv)."),
    ],
)  # fmt: skip
def test_a_bad_option_or_value_is_one_line_with_what_it_takes(args, line):
    result = vitkit(*args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"{line} (options: vitkit {args[0]} --help)"], result.stderr


@pytest.mark.parametrize(("typed", "meant"), [("fitt", "fit"), ("chek-data", "check-data"), ("pretrian", "pretrain")])
def test_a_mistyped_command_names_every_command_and_the_nearest(typed, meant):
    result = vitkit(typed, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"unknown command '{typed}' (did you mean {meant}?)" in line
    for command in ("fit", "predict", "embed", "tune", "pretrain", "shard", "check-data", "recipes"):
        assert command in line


def test_the_readme_spells_data_options_the_short_way():
    """`--data.sampler`, not `--data.init_args.sampler`: both work; the README and vitkit's messages use one."""
    from tests.helpers import REPO

    assert "--data.init_args." not in (REPO / "README.md").read_text()
    for module in (REPO / "vitkit").rglob("*.py"):
        assert "--data.init_args." not in module.read_text(), module
