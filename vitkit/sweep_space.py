"""Search spaces of ``vitkit tune --mode sweep`` (:mod:`vitkit.sweep`): a YAML file mapping recipe keys, as on the
command line without ``--``, to what to try::

    model.optimizer.init_args.lr: loguniform 1e-5 1e-2       # a float on a log scale
    model.head.init_args.dropout: uniform 0.0 0.3             # a float
    trainer.accumulate_grad_batches: int 1 4                  # an integer
    model.finetune.init_args.layer_decay: [0.65, 0.75, 0.85]  # one of these values
    trainer.max_epochs: 3                                     # fixed for every trial

``--sweep`` takes such a file, or the name of one shipped in ``vitkit/recipes/sweeps`` (``--sweep quickstart``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vitkit.errors import DataError

SWEEPS_DIR = Path(__file__).resolve().parent / "recipes" / "sweeps"

#: ``name LOW HIGH`` search spaces; any other value is fixed (a list: choices).
DISTRIBUTIONS = ("loguniform", "uniform", "int")
_SPACES = "loguniform LOW HIGH, uniform LOW HIGH, int LOW HIGH, or a list of choices"


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
        raise DataError(
            f"{where}: {text!r} needs two numbers, e.g. `{name} {'1 4' if name == 'int' else '1e-5 1e-2'}`."
        )
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
    """Every dotted key of ``tree`` (``a.b.c``), for the "did you mean" hint."""
    if not isinstance(tree, dict) or not tree:
        return [prefix] if prefix else []
    return [key for name, value in tree.items() for key in _leaf_keys(value, f"{prefix}.{name}" if prefix else name)]


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


def sweep_path(value: str) -> Path:
    """A ``--sweep`` value as a file: an existing file, else the shipped search space of that name."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    shipped = SWEEPS_DIR / f"{Path(value).name.removesuffix('.yaml').removesuffix('.yml')}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
    raise DataError(
        f"--sweep {value}: no such file or shipped search space (shipped: {names}); give a YAML file of "
        "recipe keys and what to try, e.g. `model.optimizer.init_args.lr: loguniform 1e-5 1e-2`."
    )
