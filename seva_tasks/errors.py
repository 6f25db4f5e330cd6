"""One error root, so the CLI can print a clean message instead of a traceback."""


class SevaError(Exception):
    """Base of every error seva raises on purpose."""


class ConfigError(SevaError):
    """The configuration (preset or overrides) is invalid."""


class InputError(SevaError):
    """An input file is missing, unreadable or unusable."""


class StageError(SevaError):
    """A stage failed while running."""
