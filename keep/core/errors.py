"""Errors the platform raises on purpose, each with a message that names the fix."""


class KeepError(Exception):
    """Base class of expected, user-facing failures (the CLI prints them without a traceback)."""


class SetupError(KeepError):
    """The machine is missing something set-up provides (Java, Delta jars, ...)."""


class InputError(KeepError):
    """Raw input is missing or unusable as a whole (not a single bad row: those are quarantined)."""


class GateFailed(KeepError):
    """A Great Expectations gate rejected a table; the message summarises the failures."""


class StoreUnavailable(KeepError):
    """The online store cannot be reached or read (server down, timeout, database that cannot
    be opened or stays locked): nothing was served, rather than zero vectors."""


class ConfigError(KeepError):
    """The settings (``keep.yaml``, ``KEEP_*`` variables) are malformed or out of range."""
