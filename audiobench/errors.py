"""Exception types.

``AudiobenchError`` and its subclasses are *user* errors: a bad path, a corrupt shard, an unknown
name, missing weights. The CLI turns them into one line on stderr and a non-zero exit code. Any
other exception escaping to the CLI is a bug in audiobench and keeps its traceback.
"""


class AudiobenchError(Exception):
    """An error the user can fix; its message is one self-contained line."""


class UnknownNameError(AudiobenchError, KeyError):
    """A registry lookup with a name that is not registered."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(AudiobenchError):
    """A shard, manifest, audio file or label file is missing, malformed or inconsistent."""


class WeightsError(AudiobenchError):
    """A checkpoint is missing, unverifiable, unsafe or does not fit the model."""


class ConfigError(AudiobenchError):
    """An invalid option value or combination (negative eps, NaN SNR, ...)."""


class ResultsError(AudiobenchError):
    """A results folder is unusable: locked, mismatched, edited, or not writable."""


class OutputError(ResultsError, OSError):
    """A file could not be written (disk full, I/O error, permissions); the old file is unchanged.

    Also an ``OSError`` (with ``errno`` set), for code that handles those."""

    def __str__(self):  # OSError would format "[Errno N] ..." from its args
        return str(self.args[0]) if self.args else ""
