"""vitkit's recipes: YAML LightningCLI configs shipped inside the package, usable by name (``--config quickstart``).

``vitkit recipes`` lists them; ``vitkit recipes NAME`` prints one, to copy and edit (``vitkit recipes quickstart >
my_recipe.yaml``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vitkit.errors import VitkitError

RECIPES_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """Names of the shipped recipes (file names without ``.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name`` (with or without ``.yaml``, or ``recipes/NAME.yaml``)."""
    stem = Path(name).name.removesuffix(".yaml").removesuffix(".yml")
    path = RECIPES_DIR / f"{stem}.yaml"
    if not path.is_file():
        raise VitkitError(f"no recipe file or shipped recipe named {name!r}; shipped recipes: {', '.join(names())}.")
    return path


def resolve(value: str) -> str:
    """A ``--config`` value as a file path: an existing file stays; otherwise the shipped recipe of that name."""
    if Path(value).expanduser().is_file() or value.lstrip().startswith(("{", "[")) or "\n" in value:
        return value
    return str(recipe_path(value))


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config`` / ``-c`` value that names a shipped recipe replaced by its file."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            argv[i + 1] = resolve(argv[i + 1])
        elif arg.startswith("--config="):
            argv[i] = "--config=" + resolve(arg.split("=", 1)[1])
    return argv


def describe(path: Path) -> str:
    """The first comment line of a recipe: what it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def recipes_main(args: list[str]) -> int:
    """``vitkit recipes [NAME]``: list the shipped recipes, or print one."""
    if args and args[0] in ("-h", "--help"):
        print("usage: vitkit recipes [NAME]\n\nList the recipes shipped with vitkit, or print recipe NAME (to copy it: "
              "`vitkit recipes quickstart > my_recipe.yaml`). Use one with `vitkit fit --config NAME`.")  # fmt: skip
        return 0
    if args:
        sys.stdout.write(recipe_path(args[0]).read_text())
        return 0
    width = max(len(n) for n in names())
    for name in names():
        print(f"{name:<{width}}  {describe(RECIPES_DIR / f'{name}.yaml')}")
    print(
        f"\nUse one with `vitkit fit --config NAME ...` (`vitkit pretrain --config NAME ...` for the vitkit pretrain "
        f"recipes); print it with `vitkit recipes NAME` (files in {RECIPES_DIR})."
    )
    return 0
