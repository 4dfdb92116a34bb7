"""User-facing errors.

Every error a user can cause derives from `DsaError`. The CLI prints `str(err)` on one line (no
traceback) and exits with status 2. Messages name the problem and the fix.
"""


class DsaError(Exception):
    """A problem the user can fix (bad flag, bad file, unsupported layout...)."""


class ConfigError(DsaError):
    """A model config.json or a device profile is missing, malformed or contradictory."""


class ProfileError(ConfigError):
    """A device profile file is invalid or names something unknown."""


class NoProviderError(DsaError):
    """No provider of a HAL op can run here; the message lists every provider and why it was rejected."""


class InputError(DsaError):
    """A request is invalid (prompt too long, bad sampling value, ...)."""


class TokenizerError(DsaError):
    """tokenizer.json / tokenizer_config.json / the chat template is missing, corrupt or unusable."""


class OutputDirError(DsaError):
    """An output directory cannot be written (exists and is not empty, not a directory, ...)."""


class CheckpointError(ConfigError):
    """A checkpoint directory is missing, incomplete, corrupt, or does not match its config.json."""
