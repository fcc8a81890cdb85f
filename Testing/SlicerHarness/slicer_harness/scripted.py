"""``slicer.ScriptedLoadableModule`` as Slicer's ``Base/Python/slicer/ScriptedLoadableModule.py`` behaves
for what a module's Python touches: the module's ``parent`` (a qSlicerScriptedLoadableModule with its
properties), the widget built on a ``qMRMLWidget`` parent with a vertical layout, the logic, the test case."""

from __future__ import annotations

import logging
import unittest
from typing import Any

from PyQt5 import QtCore, QtGui
from PyQt5.QtCore import pyqtProperty


class qSlicerScriptedLoadableModule(QtCore.QObject):
    """The module's ``parent``: ``qSlicerAbstractCoreModule``'s properties (title, categories, ...)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.setObjectName(name)
        self._v = {"title": name, "categories": [], "dependencies": [], "contributors": [], "helpText": "",
                   "acknowledgementText": "", "icon": QtGui.QIcon(), "hidden": False, "index": -1}

    def _prop(key: str, kind: Any) -> Any:  # noqa: N805 - property factory
        return pyqtProperty(kind, lambda self: self._v[key], lambda self, v: self._v.__setitem__(key, v))

    title = _prop("title", str)
    categories = _prop("categories", "QStringList")
    dependencies = _prop("dependencies", "QStringList")
    contributors = _prop("contributors", "QStringList")
    helpText = _prop("helpText", str)
    acknowledgementText = _prop("acknowledgementText", str)
    icon = _prop("icon", QtGui.QIcon)
    hidden = _prop("hidden", bool)
    index = _prop("index", int)
    del _prop

    @pyqtProperty(str)
    def name(self) -> str:
        return self.objectName()


class ScriptedLoadableModule:
    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = self.moduleName
        parent.categories = ["Examples"]

    def resourcePath(self, filename: str) -> str:
        import os

        import slicer

        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent: Any = None) -> None:
        import qt
        import slicer

        self.developerMode = False
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()

    def setup(self) -> None:
        self.moduleName = self.__module__

    def resourcePath(self, filename: str) -> str:
        import os

        import slicer

        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def cleanup(self) -> None:
        pass

    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent: Any = None) -> None:
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def delayDisplay(self, message: str, requestedDelay: int = 100, msec: Any = None) -> None:
        logging.info(message)
        import slicer

        slicer.app.processEvents()

    def runTest(self) -> None:
        pass


__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest", "qSlicerScriptedLoadableModule"]
