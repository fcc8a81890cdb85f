"""``python -m CAMLSegmentationLib.cli``: the ``caml`` command."""

from . import entry_point

entry_point()
