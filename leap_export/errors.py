"""Errors the CLI turns into a one-line message and a non-zero exit code (no traceback)."""

from trt_runtime.errors import ArtifactError, OutputPathError, RuntimeInputError  # noqa: F401  (re-exported)


class LeapError(Exception):
    """A user-facing error: the message says what was wrong and what to do."""
