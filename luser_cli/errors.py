"""User-facing errors.

Everything a user can cause (a missing file, a wrong HDF5 key, a NaN in the data, a checkpoint
for another task) is raised as :class:`LuserError` with a one-line message naming the problem.
The CLI prints that line and exits non-zero; it never shows a traceback for them.
"""

from __future__ import annotations


class LuserError(Exception):
    """A problem with the user's input or request, reported as one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputError(LuserError):
    """An input file or array that cannot be used (missing, corrupt, wrong keys/shape/dtype)."""


class ConfigError(LuserError):
    """A preset or flag value that is invalid."""


class CheckpointError(LuserError):
    """A checkpoint that cannot be loaded, or one made for another task/size/model."""


class OutputError(LuserError):
    """An output that cannot or must not be written: a full disk, a file-size limit, a file that
    luser owns in a run folder, the input itself, a run folder in use or holding other files."""


class NotBuiltError(LuserError):
    """A command or option that exists in the interface but is not implemented yet."""

    exit_code = 3
