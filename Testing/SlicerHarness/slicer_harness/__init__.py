"""A Slicer stand-in for driving a scripted module's Widget on real Qt (PyQt5, offscreen) in the test suite.

See ``Testing/SlicerHarness/README.md`` for what it stands in for and where it cannot be Slicer.
"""

from .app import Harness, install
from .pythonqt import HarnessError, PythonQtObject, member_kind, unwrap, wrap

__all__ = ["Harness", "HarnessError", "PythonQtObject", "install", "member_kind", "unwrap", "wrap"]
