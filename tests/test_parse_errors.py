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
