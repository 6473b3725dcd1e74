"""Errors vitkit raises for bad user input; the CLI prints them without a traceback."""

import re


class VitkitError(Exception):
    """Base class: a problem with the user's files or configuration, with a message that says what to do."""


class DataError(VitkitError, ValueError):
    """An image folder or manifest that cannot be used as given."""


class WeightsError(VitkitError, ValueError):
    """A weights file or checkpoint that does not fit the requested backbone."""


def concise_parse_error(message: str) -> str:
    """jsonargparse's nested error report on a bad command-line value, as one line naming the option.

    ``--data.root x`` given to a manifest's data module, or ``--data.target_columns a`` where a list is expected,
    produce a dozen lines of Union subtypes; this keeps the option, what it expected and what it got.
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    option = re.search(r"Option '([^']+)' is not accepted", message)
    class_path = re.search(r"Problem with given class_path '([^']+)'", message)
    given = [g for g in re.findall(r"Given value: (.*)", message) if not g.startswith("NestedArg")]
    if option and keys:
        name = f"--{keys[0]}.{option.group(1)}"
        owner = class_path.group(1) if class_path else keys[0]
        hint = {"root": " (a manifest's data is re-pointed with --data.csv)",
                "csv": " (class folders are re-pointed with --data.root)"}.get(option.group(1), "")  # fmt: skip
        return f"{name}: {owner} has no argument '{option.group(1)}'{hint}."
    if keys and given:
        expected = list(dict.fromkeys(re.findall(r"Expected a <class '(\w+)'>", message))) or ["another type"]
        expected = ["null" if t == "NoneType" else t for t in expected]
        choices = re.findall(r"Literal\[([^\]]+)\]", message)
        if choices:  # the allowed words first: --mode lrr names lr, batch_size, sweep
            expected = [f"one of {choices[0]}", *(t for t in expected if t not in ("str", "another type"))]
        example = ' (e.g. "[a, b]")' if "list" in expected else ""
        return f"--{'.'.join(keys)}: expected {' or '.join(expected)}{example}, got {given[0]!r}."
    choices = re.findall(r"Literal\[([^\]]+)\]", message)
    got = re.search(r"Got value: (.*)", message)
    if keys and choices and got:
        return f"--{keys[0]}: expected one of {choices[0]}, got {got.group(1).strip()!r}."
    return " ".join(line.strip() for line in message.strip().splitlines()[:3])
