"""User-facing errors of the runtime. Messages say what was wrong and what to do."""


class ArtifactError(Exception):
    """An artifact folder is missing, corrupt, or does not match its manifest."""


class RuntimeInputError(ValueError):
    """Bad input to the encoder (types, thresholds, batch size)."""


class OutputPathError(ValueError):
    """An output path cannot be written (its folder is a file, is not writable, or it names a folder)."""
