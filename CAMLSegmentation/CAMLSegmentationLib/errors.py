"""The one base class of the errors a user can fix.

Every problem caused by the user's input (a file that does not exist, an
image that cannot be segmented, a weights file that is not CAML's, a bad
option, a damaged catalog) raises a subclass of ``CAMLError``. The ``caml``
command prints these as one line and exits with status 2; any other
exception is a bug in this software and keeps its traceback.

The subclasses also derive from the built-in class they used to be
(``ValueError``, ``FileNotFoundError``), so callers that catch those still work.
"""

from __future__ import annotations


class CAMLError(Exception):
    """An error caused by the user's input: one line for the user, exit status 2, no traceback."""


class UserError(CAMLError, ValueError):
    """A bad option or combination of options."""


class MissingFileError(CAMLError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputError(CAMLError, OSError, ValueError):
    """An output path that cannot be written or names an unknown format (found before any work, where possible).

    An ``OSError`` for callers that catch write failures, a ``ValueError`` for
    those that catch bad names, as the two were before this class.
    """


class SizeLimitError(CAMLError, ValueError):
    """An image larger than the limit ``CAML_MAX_VOXELS`` allows (refused before allocating it)."""
