"""The application around a module: ``slicer.app``, ``slicer.modules``, the main window's module
selector, the slice views' logics on the real scene, the .ui loader, and ``install()``.

``slicer.util`` is Slicer's own (the ``slicer-core`` wheel ships it): its ``loadUI``,
``childWidgetVariables``, ``VTKObservationMixin``, ``tryWithErrorDisplay``, dialogs,
``setSliceViewerLayers`` and ``selectModule`` run unchanged on the pieces below.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import tempfile
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from PyQt5 import QtCore, QtGui, QtWidgets, uic
from PyQt5.QtCore import pyqtProperty, pyqtSignal, pyqtSlot

from . import sampledata, scripted, widgets
from .pythonqt import SLOT_ERRORS, HarnessError, PythonQtClass, find_signal, python_slot, record_error, unwrap, wrap

# -- the .ui loader -------------------------------------------------------------------------------

class QUiLoader(QtCore.QObject):
    """QtUiTools' ``QUiLoader`` (``load(QIODevice*, QWidget* parent)``, wrapped by PythonQt), on PyQt5's uic.

    Custom widgets resolve to the harness's classes; the ``<connections>`` of the
    file are made by signature as Qt's loader makes them (uic cannot: it looks
    signals up by PyQt type, and ``vtkMRMLScene*`` is none).
    """

    PYTHONQT_WRAPPED = ("load",)

    def load(self, device: Any, parent: Optional[QtWidgets.QWidget] = None) -> QtWidgets.QWidget:
        if not device.isOpen():
            device.open(QtCore.QIODevice.ReadOnly)
        data = bytes(device.readAll())
        root = ET.fromstring(data)
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        for custom in root.iter("customwidget"):
            name = custom.findtext("class")
            header = (custom.findtext("header") or "")[:-2]
            if name in widgets.CUSTOM_WIDGETS:
                module = types.ModuleType(header)
                setattr(module, name, widgets.CUSTOM_WIDGETS[name])
                sys.modules[header] = module
        widget = uic.loadUi(io.BytesIO(ET.tostring(root)))
        if parent is not None:
            widget.setParent(parent)
        top = root.find("widget").get("name")
        for conn in (connections if connections is not None else []):
            sender = widget if conn.findtext("sender") == top else widget.findChild(QtCore.QObject,
                                                                                   conn.findtext("sender"))
            receiver = widget if conn.findtext("receiver") == top else widget.findChild(QtCore.QObject,
                                                                                       conn.findtext("receiver"))
            name, kinds = find_signal(sender, conn.findtext("signal"))
            slotName = conn.findtext("slot").split("(")[0]
            signal = getattr(sender, name)
            signal = signal[kinds[0] if len(kinds) == 1 else tuple(kinds)] if kinds else signal
            signal.connect(python_slot(getattr(receiver, slotName), f"{conn.findtext('signal')} in .ui"))
        return widget


# -- qt and ctk as PythonQt's modules -------------------------------------------------------------

def _module_from(name: str, lookup: Callable[[str], Any]) -> types.ModuleType:
    module = types.ModuleType(name)
    cache: Dict[str, Any] = {}

    def getattr_(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr not in cache:
            cache[attr] = lookup(attr)
        return cache[attr]

    module.__getattr__ = getattr_  # type: ignore[attr-defined]
    return module


def _qt_lookup(attr: str) -> Any:
    if attr == "Qt":
        return QtCore.Qt
    if attr == "QUiLoader":
        return PythonQtClass(QUiLoader)
    for module in (QtCore, QtGui, QtWidgets):
        value = getattr(module, attr, None)
        if value is not None:
            return PythonQtClass(value) if isinstance(value, type) else value
    raise AttributeError(f"module 'qt' has no attribute '{attr}'")


def _ctk_lookup(attr: str) -> Any:
    for cls in (widgets.ctkCollapsibleButton, widgets.ctkPathLineEdit, widgets.ctkMessageBox):
        if cls.__name__ == attr:
            return PythonQtClass(cls)
    raise HarnessError(f"ctk.{attr} is not in the harness")


# -- the application ----------------------------------------------------------------------------------

class qSlicerLayoutManager(QtCore.QObject):
    """The slice views as MRML sees them: a ``vtkMRMLSliceLogic`` per view (Red, Yellow, Green) on the scene."""

    def __init__(self, scene: Any) -> None:
        super().__init__()
        import slicer
        import vtk

        self._logics = vtk.vtkCollection()
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # as Slicer's application logic does
        for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            sliceNode = logic.AddSliceNode(name)
            sliceNode.SetOrientation(orientation)
            sliceNode.SetDimensions(256, 256, 1)
            self._logics.AddItem(logic)
        # The layout node the application's layout manager keeps (a singleton: it survives Close Scene).
        self.layoutNode = slicer.vtkMRMLLayoutNode()
        self.layoutNode.SetSingletonTag("vtkMRMLLayoutNode")
        self.layoutNode = scene.AddNode(self.layoutNode)

    @pyqtSlot(result=object)
    def mrmlSliceLogics(self) -> Any:
        return self._logics

    @pyqtSlot(result="QStringList")
    def sliceViewNames(self) -> List[str]:
        return [self._logics.GetItemAsObject(i).GetSliceNode().GetLayoutName()
                for i in range(self._logics.GetNumberOfItems())]

    def sliceLogic(self, name: str) -> Any:
        for i in range(self._logics.GetNumberOfItems()):
            logic = self._logics.GetItemAsObject(i)
            if logic.GetSliceNode().GetLayoutName() == name:
                return logic
        raise KeyError(name)


class qSlicerApplication(QtCore.QObject):
    """``slicer.app``: the members of ``qSlicerCoreApplication.h`` / ``qSlicerApplication.h`` that the module
    and ``slicer.util`` use, over the process's QApplication."""

    startupCompleted = pyqtSignal()
    CPP_SIGNALS = ("startupCompleted()",)

    def __init__(self, harness: Harness) -> None:
        super().__init__()
        self._harness = harness
        self._temp = tempfile.mkdtemp(prefix="SlicerHarness-")

    applicationName = pyqtProperty(str, lambda self: "Slicer")
    organizationName = pyqtProperty(str, lambda self: "slicer.org")
    temporaryPath = pyqtProperty(str, lambda self: self._temp)
    cachePath = pyqtProperty(str, lambda self: os.path.join(self._temp, "cache"))

    @pyqtSlot(result=bool)
    def testingEnabled(self) -> bool:
        return False  # dialogs are shown (and recorded, see ctkMessageBox), as a user sees them

    @pyqtSlot(result=object)
    def layoutManager(self) -> Any:
        return self._harness.layoutManager

    @pyqtSlot()
    def processEvents(self) -> None:
        QtWidgets.QApplication.processEvents()

    @pyqtSlot(result="QList<QWidget*>")
    def topLevelWidgets(self) -> List[QtWidgets.QWidget]:
        return QtWidgets.QApplication.topLevelWidgets()

    @pyqtSlot(QtGui.QCursor)
    def setOverrideCursor(self, cursor: QtGui.QCursor) -> None:
        QtWidgets.QApplication.setOverrideCursor(cursor)

    @pyqtSlot()
    def restoreOverrideCursor(self) -> None:
        QtWidgets.QApplication.restoreOverrideCursor()

    @pyqtSlot(result=QtGui.QCursor)
    def overrideCursor(self) -> Optional[QtGui.QCursor]:
        return QtWidgets.QApplication.overrideCursor()

    @pyqtSlot(result=object)
    def moduleManager(self) -> Any:
        return self._harness.moduleManager

    @pyqtSlot(result=object)
    def coreIOManager(self) -> Any:
        return wrap(self._harness.ioManager)


class qSlicerCoreIOManager(QtCore.QObject):
    """``slicer.app.coreIOManager()``: ``loadNodes(fileType, properties, loadedNodes)`` for ``VolumeFile``
    (``qSlicerVolumesReader``: a scalar volume read by MRML's archetype storage node, with its display node);
    other file types are refused."""

    def __init__(self, scene: Any) -> None:
        super().__init__()
        self._scene = scene

    @pyqtSlot(str, "QVariantMap", result=bool)
    @pyqtSlot(str, "QVariantMap", object, result=bool)
    def loadNodes(self, fileType: str, properties: Dict[str, Any], loadedNodes: Any = None) -> bool:
        import slicer

        if fileType != "VolumeFile":
            raise HarnessError(f"coreIOManager().loadNodes({fileType!r}): only VolumeFile is in the harness")
        path = str(properties["fileName"])
        name = str(properties.get("name") or Path(path).name.split(".")[0])
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(self._scene.GenerateUniqueName(name))
        if not storage.ReadData(node):
            return False
        self._scene.AddNode(node)
        self._scene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.CreateDefaultDisplayNodes()
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True


class qSlicerModuleManager(QtCore.QObject):
    moduleAboutToBeUnloaded = pyqtSignal(str)
    CPP_SIGNALS = ("moduleAboutToBeUnloaded(QString)",)


class qSlicerModuleSelectorToolBar(QtWidgets.QToolBar):
    """The main window's module selector: ``selectModule(QString)`` enters a module's widget, exits the previous one."""

    def __init__(self, harness: Harness) -> None:
        super().__init__()
        self._harness = harness
        self._selected = ""

    @pyqtSlot(str)
    def selectModule(self, name: str) -> None:
        self._harness.selectModule(name)
        self._selected = name

    selectedModule = pyqtProperty(str, lambda self: self._selected)


class qSlicerMainWindow(QtWidgets.QMainWindow):
    def __init__(self, harness: Harness) -> None:
        super().__init__()
        self.setObjectName("qSlicerMainWindow")
        self._selector = qSlicerModuleSelectorToolBar(harness)
        self.addToolBar(self._selector)

    @pyqtSlot(result=object)
    def moduleSelector(self) -> Any:
        return self._selector


class qSlicerModulePanel(QtWidgets.QWidget):
    """A module's widget representation (``qSlicerScriptedLoadableModuleWidget``): ``isEntered``, ``self()``."""

    def __init__(self) -> None:
        super().__init__()
        self.setLayout(QtWidgets.QVBoxLayout())
        self._entered = False
        self._python: Any = None

    isEntered = pyqtProperty(bool, lambda self: self._entered)

    @pyqtSlot(result=object)
    def self(self) -> Any:  # noqa: A003 - PythonQt's name for the Python widget
        return self._python


class SegmentEditorModuleWidget:
    """What ``slicer.modules.segmenteditor.widgetRepresentation().self()`` offers a module: ``editor``."""

    def __init__(self, scene: Any) -> None:
        self.editor = wrap(widgets.qMRMLSegmentEditorWidget())
        self.editor.setMRMLScene(scene)

    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass


class ModuleEntry:
    """``slicer.modules.<name>``: ``name``, ``widgetRepresentation()`` (built once), ``logic()``."""

    def __init__(self, harness: Harness, name: str, makeWidget: Callable[[Any], Any],
                 logic: Optional[Callable[[], Any]] = None, path: str = "") -> None:
        self._harness = harness
        self.name = name
        self.path = path
        self._makeWidget = makeWidget
        self._logic = logic
        self._panel: Optional[qSlicerModulePanel] = None

    def widgetRepresentation(self) -> Any:
        if self._panel is None:
            self._panel = qSlicerModulePanel()
            self._panel.setObjectName(f"{self.name}ModuleWidget")
            self._panel._python = self._makeWidget(wrap(self._panel))
        return wrap(self._panel)

    def logic(self) -> Any:
        if self._logic is None:
            raise HarnessError(f"slicer.modules.{self.name.lower()}.logic() is not in the harness")
        return self._logic()


class Modules(types.SimpleNamespace):
    pass


class Harness:
    """Everything ``install()`` put in place, and what tests use to act as the user and look at the result."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["SlicerHarness"])
        self.layoutManager = qSlicerLayoutManager(scene)
        self._plotsLogic: Any = None
        self.moduleManager = qSlicerModuleManager()
        self.ioManager = qSlicerCoreIOManager(scene)
        self.app = qSlicerApplication(self)
        self.mainWindow = qSlicerMainWindow(self)
        self.modules = Modules()
        self.entries: Dict[str, ModuleEntry] = {}
        self.current: Optional[str] = None
        self._saved: Dict[str, Any] = {}
        self._savedAttrs: Dict[str, Any] = {}

    def plotsLogic(self) -> Any:
        """``slicer.modules.plots.logic()``: the real ``vtkSlicerPlotsLogic`` (slicer-core) on the scene, with the
        application logic whose selection node it sets; ``ShowChartInLayout`` switches the layout node."""
        if self._plotsLogic is None:
            import slicer

            self._appLogic = slicer.vtkMRMLApplicationLogic()
            self._appLogic.SetMRMLScene(self.scene)
            self._plotsLogic = slicer.vtkSlicerPlotsLogic()
            self._plotsLogic.SetMRMLScene(self.scene)
            self._plotsLogic.SetMRMLApplicationLogic(self._appLogic)
        return self._plotsLogic

    # -- modules --------------------------------------------------------------------------------
    def addModule(self, entry: ModuleEntry) -> None:
        self.entries[entry.name] = entry
        setattr(self.modules, entry.name.lower(), entry)

    def loadScriptedModule(self, name: str, path: Path) -> Any:
        """Import a scripted module file and make its module object, as Slicer's module factory does."""
        import slicer

        moduleDir = str(Path(path).parent)
        if moduleDir not in sys.path:
            sys.path.insert(0, moduleDir)
        pyModule = importlib.import_module(name)
        parent = scripted.qSlicerScriptedLoadableModule(name)
        moduleObject = getattr(pyModule, name)(wrap(parent))
        widgetClass = getattr(pyModule, name + "Widget")

        def makeWidget(panel: Any) -> Any:
            widget = widgetClass(panel)
            widget.setup()
            return widget

        entry = ModuleEntry(self, name, makeWidget, path=str(path))
        entry.moduleObject = moduleObject  # type: ignore[attr-defined]
        entry.parent = parent  # type: ignore[attr-defined]
        entry.pyModule = pyModule  # type: ignore[attr-defined]
        self.addModule(entry)
        slicer.util.modulePath  # noqa: B018 - Slicer's own; resolved through slicer.modules
        return pyModule

    def selectModule(self, name: str) -> None:
        if name not in self.entries:
            raise HarnessError(f"no module named {name!r} in the harness")
        if self.current and self.current != name:
            old = self.entries[self.current]
            if old._panel is not None and old._panel._entered:
                old._panel._python.exit()
                old._panel._entered = False
        entry = self.entries[name]
        panel = unwrap(entry.widgetRepresentation())
        self.current = name
        if not panel._entered:
            panel._entered = True
            panel._python.enter()

    def openModule(self, name: str) -> Any:
        """The user picks the module: returns its Python widget (``widgetRepresentation().self()``)."""
        import slicer

        slicer.util.selectModule(name)
        return unwrap(self.entries[name].widgetRepresentation())._python

    def panel(self, name: str) -> QtWidgets.QWidget:
        return unwrap(self.entries[name].widgetRepresentation())

    # -- the user's time -------------------------------------------------------------------------
    def processEvents(self, seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while True:
            self.qapp.processEvents(QtCore.QEventLoop.AllEvents, 50)
            if time.monotonic() >= end:
                return
            time.sleep(0.01)

    def waitUntil(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
        """Pump the event loop (the panel's QTimer polls the child) until ``condition()`` or time runs out."""
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
            self.processEvents(0.05)

    def closeScene(self) -> None:
        """File > Close Scene (the scene is unmodified, so Slicer asks nothing)."""
        self.scene.Clear(0)

    # -- what went wrong ------------------------------------------------------------------------
    @staticmethod
    def takeErrors() -> List[str]:
        errors = list(SLOT_ERRORS)
        SLOT_ERRORS.clear()
        return errors

    @staticmethod
    def takeDialogs() -> List[Dict[str, Any]]:
        dialogs = list(widgets.ctkMessageBox.DIALOGS)
        widgets.ctkMessageBox.DIALOGS.clear()
        return dialogs

    @staticmethod
    def answerNextDialog(button: int) -> None:
        widgets.ctkMessageBox.ANSWERS.append(int(button))

    # -- install / uninstall ----------------------------------------------------------------------
    def _setModule(self, name: str, module: Any) -> None:
        self._saved.setdefault(name, sys.modules.get(name))
        sys.modules[name] = module

    def _setAttr(self, obj: Any, name: str, value: Any) -> None:
        self._savedAttrs.setdefault(name, getattr(obj, name, None))
        setattr(obj, name, value)

    def uninstall(self) -> None:
        import slicer

        # slicer.util.mainWindow() finds the main window among the top-level widgets by its object name:
        # a later harness in the same process must not find this one.
        self.mainWindow.setObjectName("")
        self.mainWindow.close()
        self.mainWindow.deleteLater()

        for name, module in self._saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in self._savedAttrs.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        sys.excepthook = self._savedExcepthook


def install(scene: Any = None) -> Harness:
    """Put the harness's ``qt``, ``ctk``, ``slicer.app``, ``slicer.modules``, ``slicer.mrmlScene`` and the
    scripted-module base classes in place over a real ``slicer-core`` scene; ``Harness.uninstall`` undoes it."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import slicer

    scene = scene if scene is not None else slicer.vtkMRMLScene()
    harness = Harness(scene)
    harness._setModule("qt", _module_from("qt", _qt_lookup))
    harness._setModule("ctk", _module_from("ctk", _ctk_lookup))
    scriptedModule = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(scriptedModule, name, getattr(scripted, name))
    harness._setModule("slicer.ScriptedLoadableModule", scriptedModule)
    harness._setAttr(slicer, "ScriptedLoadableModule", scriptedModule)
    harness._setAttr(slicer, "mrmlScene", scene)
    harness._setAttr(slicer, "app", wrap(harness.app))
    harness._setAttr(slicer, "modules", harness.modules)
    for cls in (widgets.qMRMLWidget, widgets.qMRMLNodeComboBox, widgets.qMRMLSegmentationShow3DButton,
                widgets.qMRMLSegmentEditorWidget):
        harness._setAttr(slicer, cls.__name__, PythonQtClass(cls))
    harness.addModule(ModuleEntry(harness, "SegmentEditor", lambda panel: SegmentEditorModuleWidget(scene)))
    harness.addModule(ModuleEntry(harness, "Plots", lambda panel: None, logic=harness.plotsLogic))
    # QSettings (a path edit's history, "don't show again"): the application's names, in a folder of this run.
    QtCore.QCoreApplication.setOrganizationName(harness.app.organizationName)
    QtCore.QCoreApplication.setApplicationName(harness.app.applicationName)
    settingsDir = os.path.join(harness.app._temp, "settings")
    for settingsFormat in (QtCore.QSettings.NativeFormat, QtCore.QSettings.IniFormat):
        QtCore.QSettings.setPath(settingsFormat, QtCore.QSettings.UserScope, settingsDir)
    harness._setModule("SampleData", sampledata)
    if scene.GetCacheManager() is None:  # the application gives the scene its cache (Sample Data downloads there)
        cacheManager = slicer.vtkCacheManager()
        cacheManager.SetRemoteCacheDirectory(os.path.join(harness.app._temp, "cache", "RemoteIO"))
        scene.SetCacheManager(cacheManager)
    # The Segmentations module registers the representation converters at start-up (qSlicerSegmentationsModule).
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if rule().GetClassName() not in registered:
            factory.RegisterConverterRule(rule())
    harness.mainWindow.resize(400, 300)

    # VTK observers and PythonQt slots print their exceptions: the harness keeps them to fail the test.
    harness._savedExcepthook = sys.excepthook

    def excepthook(kind: Any, value: Any, tb: Any) -> None:
        import traceback

        SLOT_ERRORS.append("".join(traceback.format_exception(kind, value, tb)))
        harness._savedExcepthook(kind, value, tb)

    sys.excepthook = excepthook
    return harness


__all__ = ["install", "Harness", "HarnessError", "QUiLoader", "record_error", "unwrap", "wrap"]
