"""Hyperparameter sweeps over recipe keys with Optuna: ``vitkit tune --config R --mode sweep --sweep space.yaml``
(search spaces: :mod:`vitkit.sweep_space`).

Each trial is a fit of the recipe with the trial's values, in its own folder (``trial_NNN/``: config.yaml and the
logger's files; no checkpoints), judged on the recipe's ``checkpoint.monitor`` at its best epoch (by
``checkpoint.mode``), and pruned by Optuna's median rule through its Lightning callback. The study lives in SQLite
beside the trials (``study.db``): the same command continues a stopped sweep up to ``--trials`` finished trials, and
reruns the trial a kill interrupted. Trials that log to W&B form one group. The end: the best trial's flags, and its
full recipe as YAML (``<recipe>-best.yaml``) for ``vitkit fit --config``. Needs the ``tune`` extra (optuna,
optuna-integration).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.utilities import rank_zero_info

from vitkit.errors import DataError, VitkitError, concise_parse_error
from vitkit.sweep_space import load_space, resolve_key, with_values

#: The Optuna study's SQLite file in the sweep's run folder.
STUDY = "study.db"


def sweep_record(space_file: Path, command: dict[str, Any]) -> dict[str, str]:
    """What a sweep keeps in its run folder to be found again by the same command: ``sweep.yaml``, the search space,
    and ``config.yaml``, the ``vitkit tune`` command's resolved config (without ``--trials``, which may grow)."""
    config = {k: v for k, v in command.items() if k not in ("trials", "config")}
    return {"sweep.yaml": space_file.read_text(), "config.yaml": yaml.safe_dump(config, sort_keys=False)}


@dataclass
class Recipe:
    """The recipe a ``vitkit tune`` command parsed (before the CLI set its folders), and the CLI's parser, which
    turns a recipe with other values into a model, data and trainer arguments, as ``vitkit fit`` would."""

    parser: ArgumentParser
    config: Namespace

    def as_dict(self) -> dict[str, Any]:
        """The full resolved recipe (the subcommand's section) as YAML data."""
        return yaml.safe_load(self.parser.dump(self.config, skip_none=False))[self.config["subcommand"]]

    def parse(self, recipe: dict[str, Any], where: str) -> Namespace:
        """``recipe`` checked and completed by the parser; a bad value is one line naming ``where`` it came from."""
        sub = self.config["subcommand"]
        try:
            return self.parser.parse_object({"subcommand": sub, sub: recipe})
        except Exception as err:  # jsonargparse reports type errors in many lines, with several exception types
            raise DataError(f"{where}: {concise_parse_error(str(err))}") from None

    def resolved(self, recipe: dict[str, Any], where: str) -> dict[str, Any]:
        """``recipe`` parsed and dumped: class shorthands expanded, defaults filled in."""
        namespace = self.parse(recipe, where)
        return yaml.safe_load(self.parser.dump(namespace, skip_none=False))[self.config["subcommand"]]


def run_sweep(recipe: Recipe, space_file: Path, trials: int, folder: Path) -> Any:
    """Run (or continue) the Optuna study of ``space_file`` over ``recipe`` in ``folder``; returns the study."""
    optuna = _optuna()
    from vitkit.trials import fit_trial

    if recipe is None:
        raise VitkitError("--mode sweep builds its trials from a recipe: run it as `vitkit tune --config R ...`.")
    if trials < 1:
        raise VitkitError(f"--trials {trials}: expected at least 1.")
    dims, fixed = load_space(space_file)
    given = {k: v for k, v in recipe.as_dict().items() if k not in _tune_options() and k != "config"}
    where = f"sweep file {space_file}"
    base = with_values(given, {resolve_key(given, k, f"{where}, {k}"): v for k, v in fixed.items()})
    base = {k: v for k, v in recipe.resolved(base, where).items() if k not in _tune_options() and k != "config"}
    keys = {k: resolve_key(base, k, f"{where}, {k}") for k in dims}
    for i in range(max(len(d.samples()) for d in dims.values())):  # every choice and bound against the recipe's types
        sample = {keys[k]: d.samples()[i % len(d.samples())] for k, d in dims.items()}
        recipe.parse(with_values(base, sample), where)
    monitor, mode = base["checkpoint"]["monitor"], base["checkpoint"]["mode"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sweep_record(space_file, recipe.as_dict()).items():
        (folder / name).write_text(text)
    seed = base.get("seed_everything")
    settings = {
        "study_name": folder.name,
        "storage": f"sqlite:///{(folder / STUDY).resolve()}",
        "load_if_exists": True,
        "direction": "maximize" if mode == "max" else "minimize",
        "pruner": optuna.pruners.MedianPruner(),
    }
    # Optuna's "A new study created" then "Using an existing study" (the same study, made again with its sampler), and
    # its line per trial: the sweep says where it is and each trial's values itself.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(**settings)
    if isinstance(seed, int) and not isinstance(seed, bool):  # reproducible, but a resumed sweep draws new values
        sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
        study = optuna.create_study(**settings, sampler=sampler)
    _rerun_interrupted(study)
    finished = _finished(study)
    _say(f"sweep folder: {_shown(folder)} ({len(finished)} of {trials} trials finished"
         f"{', resuming' if study.trials else ''}); judged on {monitor} ({mode})")  # fmt: skip
    name = f"{folder.parent.name}/{folder.name}"

    def objective(trial: Any) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        values = {keys[k]: d.suggest(trial, k) for k, d in dims.items()}
        trial_recipe = with_values(base, values)
        path = folder / f"trial_{trial.number:03d}"
        _say(f"trial {trial.number}: {_flags(values)} ({_shown(path)})")
        return fit_trial(recipe, trial_recipe, path, name, trial, monitor, mode)

    if trials > len(finished):
        study.optimize(objective, n_trials=trials - len(finished))
    _report(recipe, study, dims, keys, base, folder, fixed)
    return study


def _report(recipe: Recipe, study: Any, dims: dict, keys: dict, base: dict, folder: Path, fixed: dict) -> None:
    """Print the best trial's value and flags; write its full recipe as ``<recipe>-best.yaml``."""
    from optuna.trial import TrialState

    count = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    _say(f"sweep: {count[TrialState.COMPLETE]} trials complete, {count[TrialState.PRUNED]} pruned, "
         f"{count[TrialState.FAIL]} failed; study: {_shown(folder / STUDY)}")  # fmt: skip
    if not count[TrialState.COMPLETE]:
        raise VitkitError(f"no trial of {_shown(folder)} completed: nothing to recommend (see the trials' output).")
    best = study.best_trial
    values = {keys[k]: d.value(best.params[k]) for k, d in dims.items() if k in best.params}
    monitor = base["checkpoint"]["monitor"]
    path = folder / f"{folder.parent.name}-best.yaml"
    resolved = recipe.resolved(with_values(base, values), f"best trial {best.number}")
    resolved = {k: v for k, v in resolved.items() if k not in _tune_options() and k != "config"}
    if isinstance(resolved.get("trainer"), dict):  # its runs go to runs/<its file name>, as any copied recipe's
        resolved["trainer"].pop("default_root_dir", None)
    path.write_text(f"# The best trial ({best.number}, {monitor} {best.value:.4g}) of {_shown(folder)}.\n"
                    + yaml.safe_dump(resolved, sort_keys=False))  # fmt: skip
    longer = any(k.startswith(("trainer.max_epochs", "trainer.max_steps")) for k in fixed)
    print(
        f"best: trial {best.number}, {monitor} {best.value:.4g}\n  {_flags(values)}\n"
        f"best recipe: {_shown(path)}\n  vitkit fit --config {_shown(path)}"
        + (" --trainer.max_epochs N  (the trials were shortened)" if longer else ""),
        flush=True,
    )


def _rerun_interrupted(study: Any) -> None:
    """Trials left running by a killed sweep of this machine fail, and their values run again first."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if pid is None or (host == socket.gethostname() and not _alive(int(pid))):
            study.tell(trial.number, state=TrialState.FAIL)
            if trial.params:
                study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
            _say(f"trial {trial.number} was interrupted: it runs again")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _flags(values: dict[str, Any]) -> str:
    """``--key value`` flags to paste (YAML/JSON values quoted for the shell)."""
    import shlex

    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return shlex.quote(value if isinstance(value, str) else json.dumps(value))

    return " ".join(f"--{key} {shown(value)}" for key, value in values.items())


def _tune_options() -> set[str]:
    """The options of ``vitkit tune`` itself (not recipe keys)."""
    import inspect

    from vitkit.trainer import VitkitTrainer

    return set(inspect.signature(VitkitTrainer.tune).parameters) - {"self", "model", "datamodule"}


def _optuna() -> Any:
    try:
        optuna = importlib.import_module("optuna")
        importlib.import_module("optuna_integration")
    except ImportError as err:
        raise VitkitError(f"--mode sweep needs {err.name}: pip install 'vitkit[tune]'") from None
    return optuna


def _say(message: str) -> None:
    rank_zero_info(f"vitkit: {message}")


def _shown(path: Path) -> str:
    from vitkit.trainer import _shown as shown

    return shown(path)
