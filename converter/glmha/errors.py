"""User-facing errors.

Every problem a user can cause (a bad file, an unknown architecture, an input size the model cannot
take) is raised as a `GlmhaError` whose message is one self-contained line. The command-line tools
print that line and exit non-zero without a traceback; Python callers can catch the class.
"""

from __future__ import annotations


class GlmhaError(Exception):
    """A problem with the user's input, described in one line."""


class CheckpointError(GlmhaError):
    """The checkpoint file cannot be read (missing, empty, corrupt, unsafe)."""


class ArchitectureError(GlmhaError):
    """The state dict matches no supported family, or has no CSA layer."""


class InputShapeError(GlmhaError):
    """The model cannot take an input of the requested shape."""
