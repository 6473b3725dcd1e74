"""`vitkit tune` through the CLI as users type it: the LR range test, the batch-size search, Optuna sweeps."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from tests.conftest import TINY_VIT
from tests.helpers import REPO, VITKIT, vitkit

pytestmark = pytest.mark.slow

#: The quickstart recipe shrunk to a 2-block ViT of 8x8 patches, data loaded in-process, no logger.
TINY = ["--model.backbone.init_args.model_kwargs", json.dumps(TINY_VIT["model_kwargs"]), "--data.num_workers", "0",
        "--data.batch_size", "16", "--trainer.logger", "false"]  # fmt: skip
LR_FLAG = re.compile(r"--model\.optimizer\.init_args\.lr (\S+)")


def best_score(run: Path) -> float:
    """The best ``val/acc`` a fit's ModelCheckpoint kept."""
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["callbacks"]
    return next(float(s["best_model_score"]) for k, s in state.items() if "val/acc" in k)


def test_lr_finder_suggests_an_lr_that_trains_where_100x_it_does_not(tmp_path, shapes_root):
    tuned = vitkit("tune", "--config", "quickstart", "--data.root", shapes_root, *TINY, "--mode", "lr",
                   "--lr_steps", "50", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "runs" / "quickstart" / "version_0"
    record = json.loads((run / "lr_find.json").read_text())
    (flag,) = LR_FLAG.findall(tuned.stdout)
    lr = float(flag)
    assert lr == pytest.approx(record["suggestion"], rel=0.05)
    # on the falling part of the curve: past the first LRs, below the loss at the start and the LR of the lowest loss
    lrs, losses = record["lr"], record["loss"]
    at = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / record["suggestion"])))
    lowest = min(range(len(lrs)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)
    assert 0 < at < lowest and losses[at] < losses[0], (lr, lrs, losses)
    assert (run / "lr_find.png").read_bytes()[:4] == b"\x89PNG" and (run / "config.yaml").is_file()
    for rate in (lr, 100 * lr):
        vitkit("fit", "--config", "quickstart", "--data.root", shapes_root, *TINY, "--trainer.max_epochs", "2",
               "--model.optimizer.init_args.lr", rate, cwd=tmp_path)  # fmt: skip
    at_suggestion, at_100x = best_score(run.with_name("version_1")), best_score(run.with_name("version_2"))
    assert at_suggestion >= 0.6 and at_suggestion > at_100x + 0.1, (lr, at_suggestion, at_100x)  # chance: 0.25


def test_batch_size_search_stops_at_the_given_limit_and_scales_the_lr(tmp_path, shapes_root):
    tuned = vitkit("tune", "--config", "quickstart", "--data.root", shapes_root, *TINY, "--mode", "batch_size",
                   "--max_batch_size", "24", cwd=tmp_path)  # fmt: skip
    # The recipe (with --data.batch_size 16) runs AdamW at 1e-3: linearly scaled to 24, 1.5e-3.
    assert "--data.batch_size 24 --model.optimizer.init_args.lr 1.5e-03" in tuned.stdout
    assert "weights_only` was not set" not in tuned.stdout + tuned.stderr
    record = json.loads((tmp_path / "runs" / "quickstart" / "version_0" / "batch_size.json").read_text())
    assert record["largest_fitted"] == 24 and record["recipe_batch_size"] == 16


def test_sweep_killed_mid_trial_resumes_from_its_database_and_its_best_recipe_fits(tmp_path, shapes_root):
    command = ["tune", "--config", "quickstart", "--data.root", shapes_root, *TINY, "--trainer.limit_train_batches",
               "2", "--mode", "sweep", "--sweep", "quickstart", "--trials", "3"]  # fmt: skip
    run = tmp_path / "runs" / "quickstart" / "version_0"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([VITKIT, *map(str, command)], cwd=tmp_path, env=env, stdout=log, stderr=log,
                                   start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while not (run / "trial_001").is_dir() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # as a crash or a lost machine would: no clean-up
        process.wait()
    assert (run / "trial_001").is_dir(), (tmp_path / "killed.log").read_text()

    resumed = vitkit(*command, cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert "1 of 3 trials finished, resuming" in output and "trial 1 was interrupted: it runs again" in output
    assert "Using an existing study" not in output and "A new study created" not in output
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # the same folder, not a new sweep
    study = optuna.load_study(study_name="version_0", storage=f"sqlite:///{run / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and states.count(optuna.trial.TrialState.FAIL) == 1
    assert study.trials[2].params == study.trials[1].params  # the interrupted trial ran again, first
    assert len({t.params["model.optimizer.init_args.lr"] for t in study.trials}) == 3  # resuming drew new values

    best = run / "quickstart-best.yaml"
    recipe = yaml.safe_load(best.read_text())
    best_lr = study.best_trial.params["model.optimizer.init_args.lr"]
    assert recipe["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(best_lr)
    assert f"--model.optimizer.init_args.lr {best_lr:.4g}" in resumed.stdout
    vitkit("fit", "--config", best, "--trainer.max_epochs", "1", cwd=tmp_path)
    fitted_run = tmp_path / "runs" / "quickstart-best" / "version_0"  # runs/<recipe file name>, as any copy's
    fitted = yaml.safe_load((fitted_run / "config.yaml").read_text())
    assert fitted["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(best_lr)
    assert (fitted_run / "checkpoints" / "last.ckpt").is_file()


def test_a_sweep_prunes_trials_below_the_median_once_five_have_finished(tmp_path, shapes_root):
    """Optuna's MedianPruner judges nothing before 5 trials have finished: 8 trials, so that later ones can be
    stopped at an epoch where they trail the median of the finished trials (a wide LR range makes some trail)."""
    (tmp_path / "space.yaml").write_text("model.optimizer.init_args.lr: loguniform 1e-6 1.0\ntrainer.max_epochs: 3\n")
    swept = vitkit("tune", "--config", "quickstart", "--data.root", shapes_root, *TINY, "--trainer.limit_train_batches",
                   "2", "--trainer.enable_progress_bar", "false", "--mode", "sweep", "--sweep", "space.yaml",
                   "--trials", "8", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "runs" / "quickstart" / "version_0"
    study = optuna.load_study(study_name="version_0", storage=f"sqlite:///{run / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(study.trials) == 8 and pruned, [(t.number, t.state, t.intermediate_values) for t in study.trials]
    assert f"{len(complete)} trials complete, {len(pruned)} pruned" in swept.stdout + swept.stderr
    for trial in pruned:  # stopped at an epoch where it trailed the median of the earlier trials at that epoch
        epoch, value = max(trial.intermediate_values.items())
        assert trial.number >= 5
        finished = [t.intermediate_values[epoch] for t in complete if t.number < trial.number]
        assert value < float(np.median(finished)), (trial.number, epoch, value, finished)


@pytest.mark.parametrize(
    ("space", "says"),
    [
        ("model.optimizer.init_args.learning_rate: loguniform 1e-4 1e-2\n",
         "model.optimizer.init_args.learning_rate is not a key of the recipe (did you mean "
         "model.optimizer.init_args.lr?)"),
        ("model.optimizer.init_args.lr: loguniform 1e-2\n", "'loguniform 1e-2' needs two numbers"),
    ],
)  # fmt: skip
def test_bad_sweep_key_or_space_is_one_line(tmp_path, shapes_root, space, says):
    (tmp_path / "space.yaml").write_text(space)
    result = vitkit("tune", "--config", "quickstart", "--data.root", shapes_root, *TINY, "--mode", "sweep",
                    "--sweep", "space.yaml", check=False, cwd=tmp_path)  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("vitkit: error")]
    assert result.returncode == 2 and len(errors) == 1 and says in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs" / "quickstart" / "version_0").exists()


def test_an_lr_test_that_cannot_suggest_is_one_line_and_leaves_no_run(tmp_path, shapes_root):
    base = ["tune", "--config", "quickstart", "--data.root", shapes_root, *TINY, "--mode", "lr"]
    cases = [(["--lr_steps", "5"], "--lr_steps 5: the LR range test needs at least 20 steps"),
             (["--min_lr", "1e3", "--max_lr", "1e6", "--lr_steps", "20"], "took too few steps")]  # fmt: skip
    for extra, says in cases:
        result = vitkit(*base, *extra, check=False, cwd=tmp_path)
        errors = [line for line in result.stderr.splitlines() if line.startswith("vitkit: error")]
        assert result.returncode == 2 and len(errors) == 1 and says in errors[0], result.stderr
        assert not (tmp_path / "runs").exists()  # not even the config of a tuning run that found nothing
