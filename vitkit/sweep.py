"""Hyperparameter sweeps over recipe keys with Optuna: ``vitkit tune --config R --mode sweep --sweep space.yaml``.

A search space file maps recipe keys, as on the command line without ``--``, to what to try::

    model.optimizer.init_args.lr: loguniform 1e-5 1e-2       # a float on a log scale
    model.head.init_args.dropout: uniform 0.0 0.3             # a float
    trainer.accumulate_grad_batches: int 1 4                  # an integer
    model.finetune.init_args.layer_decay: [0.65, 0.75, 0.85]  # one of these values
    trainer.max_epochs: 3                                     # fixed for every trial

Each trial is a fit of the recipe with the trial's values, in its own folder (``trial_NNN/``: config.yaml and the
logger's files; no checkpoints), judged on the recipe's ``checkpoint.monitor`` at its best epoch (by
``checkpoint.mode``), and pruned by Optuna's median rule through its Lightning callback. The study lives in SQLite
beside the trials (``study.db``): the same command continues a stopped sweep up to ``--trials`` finished trials, and
reruns the trial a kill interrupted. Trials that log to W&B form one group. The end: the best trial's flags, and its
full recipe as YAML (``<recipe>-best.yaml``) for ``vitkit fit --config``. Needs the ``tune`` extra (optuna,
optuna-integration).
"""

from __future__ import annotations

import difflib
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

#: ``name LOW HIGH`` search spaces; any other value is fixed (a list: choices).
DISTRIBUTIONS = ("loguniform", "uniform", "int")
_SPACES = "loguniform LOW HIGH, uniform LOW HIGH, int LOW HIGH, or a list of choices"


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


@dataclass(frozen=True)
class Dimension:
    """One searched key: a distribution (``kind`` with ``low``/``high``) or ``choices``."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def suggest(self, trial: Any, name: str) -> Any:
        if self.kind == "choice":
            labels = [_label(c) for c in self.choices]
            return self.choices[labels.index(trial.suggest_categorical(name, labels))]
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_float(name, self.low, self.high, log=self.kind == "loguniform")

    def samples(self) -> list[Any]:
        """Values to check against the recipe's types before any trial runs."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def value(self, stored: Any) -> Any:
        """A trial's value from what Optuna stored."""
        return self.choices[[_label(c) for c in self.choices].index(stored)] if self.kind == "choice" else stored


def _label(choice: Any) -> Any:
    """Optuna stores None, bool, int, float and str choices; others (lists, dicts) by their JSON."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def load_space(path: Path) -> tuple[dict[str, Dimension], dict[str, Any]]:
    """``({key: Dimension}, {key: fixed value})`` from a search space file; bad entries are one-line errors."""
    try:
        space = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"sweep file {path}: not valid YAML ({' '.join(str(err).split())}).") from None
    if not isinstance(space, dict) or not space:
        raise DataError(f"sweep file {path}: expected recipe keys mapped to {_SPACES} (e.g. `trainer.max_epochs: 3`).")
    dims, fixed = {}, {}
    for key, value in space.items():
        where = f"sweep file {path}, {key}"
        if isinstance(value, list):
            if not value:
                raise DataError(f"{where}: an empty list of choices; give at least one value.")
            dims[str(key)] = Dimension("choice", choices=tuple(value))
        elif isinstance(value, str) and (dim := _distribution(value, where)) is not None:
            dims[str(key)] = dim
        else:
            fixed[str(key)] = value
    if not dims:
        raise DataError(f"sweep file {path}: nothing to search; give a key {_SPACES}.")
    return dims, fixed


def _distribution(text: str, where: str) -> Dimension | None:
    """``loguniform 1e-5 1e-2`` as a Dimension; ``None`` for a plain string value (fixed)."""
    name, *bounds = text.split()
    if name not in DISTRIBUTIONS:
        if bounds and all(_is_number(b) for b in bounds):
            raise DataError(f"{where}: unknown distribution {name!r} in {text!r}; expected {_SPACES}.")
        return None
    if len(bounds) != 2 or not all(_is_number(b) for b in bounds):
        raise DataError(f"{where}: {text!r} needs two numbers, e.g. `{name} {'1 4' if name == 'int' else '1e-5 1e-2'}`.")
    low, high = float(bounds[0]), float(bounds[1])
    if name == "int" and not (low.is_integer() and high.is_integer()):
        raise DataError(f"{where}: {text!r} needs whole numbers.")
    if not low < high:
        raise DataError(f"{where}: {text!r}: LOW must be below HIGH.")
    if name == "loguniform" and low <= 0:
        raise DataError(f"{where}: {text!r}: a log scale needs LOW > 0.")
    return Dimension(name, low, high)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def resolve_key(recipe: dict[str, Any], key: str, where: str) -> str:
    """``key`` as the path it has in the resolved recipe (``data.batch_size`` -> ``data.init_args.batch_size``)."""
    node: Any = recipe
    path: list[str] = []
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            path.append(part)
        elif isinstance(node, dict) and isinstance(node.get("init_args"), dict) and part in node["init_args"]:
            path += ["init_args", part]
            node = node["init_args"]
        else:
            if node is None and path:
                raise DataError(f"{where}: {'.'.join(path)} is null in the recipe; give it a class first in the "
                                f"sweep file (e.g. `{'.'.join(path)}: CLASS`).")  # fmt: skip
            close = difflib.get_close_matches(key, _leaf_keys(recipe), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise DataError(f"{where}: {key} is not a key of the recipe{hint}; see `vitkit fit --config R "
                            "--print_config` for its keys.")  # fmt: skip
        node = node[part]
    return ".".join(path)


def _leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix]
    return [key for name, value in tree.items() for key in _leaf_keys(value, f"{prefix}{name}.") or [prefix]]


def with_values(recipe: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``recipe`` with dotted ``values`` set."""
    recipe = json.loads(json.dumps(recipe))
    for key, value in values.items():
        *parents, last = key.split(".")
        node = recipe
        for part in parents:
            node = node[part]
        node[last] = value
    return recipe


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
    seed = base.get("seed_everything")
    study = optuna.create_study(
        study_name=folder.name,
        storage=f"sqlite:///{(folder / 'study.db').resolve()}",
        direction="maximize" if mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed if isinstance(seed, int) else None),
        pruner=optuna.pruners.MedianPruner(),
        load_if_exists=True,
    )
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
         f"{count[TrialState.FAIL]} failed; study: {_shown(folder / 'study.db')}")  # fmt: skip
    if not count[TrialState.COMPLETE]:
        raise VitkitError(f"no trial of {_shown(folder)} completed: nothing to recommend (see the trials' output).")
    best = study.best_trial
    values = {keys[k]: d.value(best.params[k]) for k, d in dims.items() if k in best.params}
    monitor = base["checkpoint"]["monitor"]
    path = folder / f"{folder.parent.name}-best.yaml"
    resolved = recipe.resolved(with_values(base, values), f"best trial {best.number}")
    resolved = {k: v for k, v in resolved.items() if k not in _tune_options() and k != "config"}
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
