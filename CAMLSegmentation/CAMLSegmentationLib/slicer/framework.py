"""What the module's Python needs from the Slicer application, and stand-ins where it is absent.

The Slicer module (``CAMLSegmentation.py``) and the Logic modules beside this one
import the application's pieces from here: Qt, the scripted-module base classes,
``VTKObservationMixin`` and the translation functions. Inside Slicer they are the
real ones; on the ``slicer-core`` wheels (MRML without a GUI, the test suite)
the base classes are plain stand-ins so the Logic still runs, and ``qt`` is None.
Module-wide constants live here too, so the Logic never imports the module file
(which would import back up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:  # the Slicer application
    import qt
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    IN_SLICER_APP = True
except ImportError:  # MRML without a GUI (slicer-core wheels): the Logic and its helpers still work
    qt = None

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        def __init__(self, parent: Any) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        pass

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            pass

    class ScriptedLoadableModuleTest:  # type: ignore[no-redef]
        pass

    class VTKObservationMixin:  # type: ignore[no-redef]
        def __init__(self) -> None:
            pass

    IN_SLICER_APP = False

try:  # Slicer >= 5.4: user-visible strings go through Slicer's translation machinery
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # older Slicer, or the slicer-core wheels

    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text

MODULE_NAME = "CAMLSegmentation"
#: The folder of ``CAMLSegmentation.py`` (this package sits in it, as ``CAMLSegmentationLib/``).
MODULE_DIR = Path(__file__).resolve().parents[2]
DOCUMENTATION_URL = "https://github.com/camlsegmentation/SlicerCAMLSegmentation#readme"
#: The oldest PyTorch the engine runs on (checked from the installed package, never by importing it here).
TORCH_REQUIREMENT = ">=2.0"


def moduleResourcePath(relative: str) -> Path:
    """Where a resource (``UI/x.ui``, ``Icons/x.png``, ``Models/models.json``) lives.

    First ``Resources/`` next to the module file, which is where Slicer's
    ``resourcePath()`` looks: the module's UI and icons are kept there in the
    source tree too, and an installed extension has every resource there, the
    bundled models included. In a source checkout the models stay in the
    top-level ``Resources/`` one folder up, which is tried next. A resource in
    neither place is named at the first (so an error message shows where
    Slicer would look).
    """
    beside_module = MODULE_DIR / "Resources" / relative
    if beside_module.exists():
        return beside_module
    top_level = MODULE_DIR.parent / "Resources" / relative
    return top_level if top_level.exists() else beside_module


__all__ = ["qt", "ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
           "ScriptedLoadableModuleWidget", "VTKObservationMixin", "IN_SLICER_APP", "_", "translate",
           "MODULE_NAME", "MODULE_DIR", "DOCUMENTATION_URL", "TORCH_REQUIREMENT", "moduleResourcePath"]
