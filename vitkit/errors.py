"""Errors vitkit raises for bad user input; the CLI prints them without a traceback."""


class VitkitError(Exception):
    """Base class: a problem with the user's files or configuration, with a message that says what to do."""


class DataError(VitkitError, ValueError):
    """An image folder or manifest that cannot be used as given."""


class WeightsError(VitkitError, ValueError):
    """A weights file or checkpoint that does not fit the requested backbone."""
