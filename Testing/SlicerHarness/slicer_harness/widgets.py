"""CTK, qMRML and Slicer widget classes as real QWidget subclasses.

Each class declares, through PyQt5's ``pyqtProperty``/``pyqtSignal``/``pyqtSlot``,
the Q_PROPERTYs, signals and public slots / Q_INVOKABLEs of the C++ header named
in its docstring, and nothing else (``CPP_SIGNALS`` spells the signals as the
header does, with their VTK pointer types; the meta-object carries them as
``PyQt_PyObject``). Helpers that are not slots stay invisible to the module's
code, as they are under PythonQt. ``test_panel_harness.py`` checks each
meta-object against these declarations.

The MRML side is real: node selectors list the nodes of a real ``slicer-core``
scene, the Segment Editor writes a real ``vtkMRMLSegmentEditorNode``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from PyQt5 import QtCore, QtGui, QtWidgets
from PyQt5.QtCore import pyqtProperty, pyqtSignal, pyqtSlot

from .pythonqt import HarnessError

Q = QtCore.Qt


# -- CTK ------------------------------------------------------------------------------------------

class ctkCollapsibleButton(QtWidgets.QAbstractButton):
    """``commontk/CTK`` ``Libs/Widgets/ctkCollapsibleButton.h``: a checkable header that shows or hides its children."""

    CPP_SIGNALS = ("contentsCollapsed(bool)",)
    contentsCollapsed = pyqtSignal(bool)

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self._collapsed = False
        self._collapsedHeight = 10
        self._frameShape = int(QtWidgets.QFrame.NoFrame)
        self._frameShadow = int(QtWidgets.QFrame.Plain)
        self._lineWidth = 1
        self._midLineWidth = 0
        self._textAlignment = int(Q.AlignLeft | Q.AlignVCenter)
        self._indicatorAlignment = int(Q.AlignLeft | Q.AlignVCenter)
        self.setCheckable(True)
        self.setChecked(True)
        self.toggled.connect(self._onToggled)
        self.setSizePolicy(QtWidgets.QSizePolicy.Preferred, QtWidgets.QSizePolicy.Preferred)
        self._applyMargins()

    def _headerHeight(self) -> int:
        return self.fontMetrics().height() + 10

    def _applyMargins(self) -> None:
        self.setContentsMargins(4, self._headerHeight() + 2, 4, 4)

    def _onToggled(self, checked: bool) -> None:
        self.setCollapsed(not checked)

    def _getCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, collapsed: bool) -> None:
        collapsed = bool(collapsed)
        if self.isChecked() == collapsed:
            self.setChecked(not collapsed)
        if collapsed == self._collapsed:
            return
        self._collapsed = collapsed
        for child in self.findChildren(QtWidgets.QWidget, options=Q.FindDirectChildrenOnly):
            child.setVisible(not collapsed)
        self.updateGeometry()
        self.contentsCollapsed.emit(collapsed)

    def childEvent(self, event: QtCore.QChildEvent) -> None:
        super().childEvent(event)
        if event.type() == QtCore.QEvent.ChildAdded and isinstance(event.child(), QtWidgets.QWidget):
            event.child().setVisible(not self._collapsed)

    collapsed = pyqtProperty(bool, _getCollapsed, setCollapsed, notify=contentsCollapsed)
    collapsedHeight = pyqtProperty(int, lambda self: self._collapsedHeight,
                                   lambda self, v: setattr(self, "_collapsedHeight", v))
    contentsFrameShape = pyqtProperty(int, lambda self: self._frameShape,
                                      lambda self, v: setattr(self, "_frameShape", v))
    contentsFrameShadow = pyqtProperty(int, lambda self: self._frameShadow,
                                       lambda self, v: setattr(self, "_frameShadow", v))
    contentsLineWidth = pyqtProperty(int, lambda self: self._lineWidth, lambda self, v: setattr(self, "_lineWidth", v))
    contentsMidLineWidth = pyqtProperty(int, lambda self: self._midLineWidth,
                                        lambda self, v: setattr(self, "_midLineWidth", v))
    buttonTextAlignment = pyqtProperty(int, lambda self: self._textAlignment,
                                       lambda self, v: setattr(self, "_textAlignment", v))
    indicatorAlignment = pyqtProperty(int, lambda self: self._indicatorAlignment,
                                      lambda self, v: setattr(self, "_indicatorAlignment", v))

    def hitButton(self, pos: QtCore.QPoint) -> bool:
        return pos.y() < self._headerHeight()

    def sizeHint(self) -> QtCore.QSize:
        header = QtCore.QSize(self.fontMetrics().horizontalAdvance(self.text()) + 40, self._headerHeight())
        if self._collapsed or self.layout() is None:
            return header
        body = self.layout().sizeHint()
        return QtCore.QSize(max(header.width(), body.width()), self._headerHeight() + 6 + body.height())

    def minimumSizeHint(self) -> QtCore.QSize:
        if self._collapsed or self.layout() is None:
            return QtCore.QSize(40, self._headerHeight())
        body = self.layout().minimumSize()
        return QtCore.QSize(body.width(), self._headerHeight() + 6 + body.height())

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:
        painter = QtWidgets.QStylePainter(self)
        option = QtWidgets.QStyleOptionButton()
        option.initFrom(self)
        option.rect = QtCore.QRect(0, 0, self.width(), self._headerHeight())
        option.state |= QtWidgets.QStyle.State_Raised
        painter.drawControl(QtWidgets.QStyle.CE_PushButtonBevel, option)
        arrow = QtWidgets.QStyleOption()
        arrow.initFrom(self)
        arrow.rect = QtCore.QRect(6, (self._headerHeight() - 10) // 2, 10, 10)
        painter.drawPrimitive(QtWidgets.QStyle.PE_IndicatorArrowRight if self._collapsed
                              else QtWidgets.QStyle.PE_IndicatorArrowDown, arrow)
        painter.drawText(QtCore.QRect(22, 0, self.width() - 26, self._headerHeight()),
                         int(Q.AlignLeft | Q.AlignVCenter), self.text())
        if not self._collapsed:
            painter.setPen(self.palette().color(QtGui.QPalette.Mid))
            painter.drawRect(0, self._headerHeight(), self.width() - 1, self.height() - self._headerHeight() - 1)


class ctkPathLineEdit(QtWidgets.QWidget):
    """``commontk/CTK`` ``Libs/Widgets/ctkPathLineEdit.h``: an editable path with history and a browse button."""

    CPP_SIGNALS = ("validInputChanged(bool)", "currentPathChanged(QString)")
    validInputChanged = pyqtSignal(bool)
    currentPathChanged = pyqtSignal(str)

    # enum Filter (Q_FLAGS(Filters))
    Dirs, Files, Drives, NoSymLinks = 0x001, 0x002, 0x004, 0x008
    AllEntries, TypeMask, Readable, Writable, Executable = 0x007, 0x00F, 0x010, 0x020, 0x040
    PermissionMask, Modified, Hidden, System, AccessMask = 0x070, 0x080, 0x100, 0x200, 0x3F0
    AllDirs, CaseSensitive, NoDotAndDotDot, NoDot, NoDotDot, NoFilter = 0x400, 0x800, 0x1000, 0x2000, 0x4000, -1
    # enum Option (Q_FLAGS(Options)) and enum SizeAdjustPolicy
    ShowDirsOnly, DontResolveSymlinks, DontConfirmOverwrite, DontUseSheet = 0x1, 0x2, 0x4, 0x8
    DontUseNativeDialog, ReadOnly, HideNameFilterDetails = 0x10, 0x20, 0x40
    AdjustToContents, AdjustToContentsOnFirstShow, AdjustToMinimumContentsLength = 0, 1, 2

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self._values: Dict[str, Any] = {"label": "", "filters": self.AllEntries, "options": 0, "settingKey": "",
                                        "showBrowseButton": True, "showHistoryButton": True,
                                        "sizeAdjustPolicy": self.AdjustToContentsOnFirstShow,
                                        "minimumContentsLength": 0, "nameFilters": []}
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setEditable(True)
        self._combo.editTextChanged.connect(self._onTextChanged)
        self._browse = QtWidgets.QToolButton(self)
        self._browse.setText("...")
        layout.addWidget(self._combo, 1)
        layout.addWidget(self._browse)

    def _onTextChanged(self, text: str) -> None:
        self.currentPathChanged.emit(text)

    def _value(name: str, kind: Any) -> Any:  # noqa: N805 - property factory
        return pyqtProperty(kind, lambda self: self._values[name], lambda self, v: self._values.__setitem__(name, v))

    label = _value("label", str)
    filters = _value("filters", int)
    options = _value("options", int)
    settingKey = _value("settingKey", str)
    showBrowseButton = _value("showBrowseButton", bool)
    showHistoryButton = _value("showHistoryButton", bool)
    sizeAdjustPolicy = _value("sizeAdjustPolicy", int)
    minimumContentsLength = _value("minimumContentsLength", int)
    nameFilters = _value("nameFilters", "QStringList")
    del _value

    def _currentPath(self) -> str:
        return self._combo.currentText()

    @pyqtSlot(str)
    def setCurrentPath(self, path: str) -> None:
        self._combo.setEditText(path)

    currentPath = pyqtProperty(str, _currentPath, setCurrentPath, user=True)

    # uic sets these through their setters (C++ public, non-slot methods: invisible to PythonQt).
    def setLabel(self, v: str) -> None:
        self._values["label"] = v

    def setFilters(self, v: int) -> None:
        self._values["filters"] = int(v)

    def setSettingKey(self, v: str) -> None:
        self._values["settingKey"] = v
        self.retrieveHistory()  # as ctkPathLineEdit::setSettingKey does

    @pyqtSlot()
    def browse(self) -> None:
        raise HarnessError("ctkPathLineEdit.browse() opens a file dialog: set currentPath in the test instead")

    #: ``ctkPathLineEditPrivate::sMaxHistory``: the paths the history keeps.
    MAX_HISTORY = 5

    def _historyKey(self) -> str:
        """``ctkPathLineEditPrivate::settingKey()``: the QSettings key of the history."""
        return "ctkPathLineEdit/" + (self._values["settingKey"] or self.objectName())

    @staticmethod
    def _history(settings: QtCore.QSettings, key: str) -> List[str]:
        value = settings.value(key) or []
        return [value] if isinstance(value, str) else [str(v) for v in value]

    @pyqtSlot()
    def retrieveHistory(self) -> None:
        """As ``ctkPathLineEdit::retrieveHistory``: the combo box lists the paths kept in QSettings; with no
        path set yet, the most recent one becomes the current path."""
        path = self._currentPath()
        wasBlocking = self.blockSignals(True)
        self._combo.clear()
        for item in self._history(QtCore.QSettings(), self._historyKey())[:self.MAX_HISTORY]:
            self._combo.addItem(item)
        if not path:
            self.blockSignals(wasBlocking)
            self._combo.setCurrentIndex(0)
        else:
            self.setCurrentPath(path)
            self.blockSignals(wasBlocking)

    @pyqtSlot()
    def addCurrentPathToHistory(self) -> None:
        """As ``ctkPathLineEdit::addCurrentPathToHistory``: the current path goes first in the QSettings
        history (once), and into the combo box's list."""
        path = self._currentPath()
        if not path:
            return
        settings = QtCore.QSettings()
        history = [p for p in self._history(settings, self._historyKey()) if p != path]
        settings.setValue(self._historyKey(), [path] + history)
        index = self._combo.findText(path)
        if index >= 0:
            self._combo.removeItem(index)
        while self._combo.count() >= self.MAX_HISTORY:
            self._combo.removeItem(self._combo.count() - 1)
        self._combo.insertItem(0, path)
        self._combo.setCurrentIndex(0)


class ctkMessageBox(QtWidgets.QMessageBox):
    """``commontk/CTK`` ``Libs/Widgets/ctkMessageBox.h``: QMessageBox with "Don't show again".

    ``exec()`` never blocks here: the box is recorded in ``DIALOGS`` and answered
    with the answer a test queued in ``ANSWERS`` (or Ok for a box whose only button
    is Ok); any other box is refused with a HarnessError.
    """

    CPP_SIGNALS = ()
    DIALOGS: List[Dict[str, Any]] = []
    ANSWERS: List[int] = []

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self._dontShowAgain = False
        self._dontShowAgainKey = ""
        self._dontShowAgainVisible = False

    @pyqtSlot(bool)
    def setDontShowAgain(self, v: bool) -> None:
        self._dontShowAgain = v

    @pyqtSlot(str)
    def setDontShowAgainSettingsKey(self, v: str) -> None:
        self._dontShowAgainKey = v

    @pyqtSlot(bool)
    def setDontShowAgainVisible(self, v: bool) -> None:
        self._dontShowAgainVisible = v

    dontShowAgain = pyqtProperty(bool, lambda self: self._dontShowAgain, setDontShowAgain)
    dontShowAgainSettingsKey = pyqtProperty(str, lambda self: self._dontShowAgainKey, setDontShowAgainSettingsKey)
    dontShowAgainVisible = pyqtProperty(bool, lambda self: self._dontShowAgainVisible, setDontShowAgainVisible)

    def exec(self) -> int:  # noqa: A003
        record = {"text": self.text(), "title": self.windowTitle().strip(), "icon": int(self.icon()),
                  "buttons": int(self.standardButtons()), "detail": self.detailedText()}
        ctkMessageBox.DIALOGS.append(record)
        if ctkMessageBox.ANSWERS:
            return ctkMessageBox.ANSWERS.pop(0)
        if int(self.standardButtons()) == int(QtWidgets.QMessageBox.Ok):
            return int(QtWidgets.QMessageBox.Ok)
        raise HarnessError(f"a dialog asked the user and the test gave no answer: {record}")

    exec_ = exec


# -- qMRML ----------------------------------------------------------------------------------------

class qMRMLWidget(QtWidgets.QWidget):
    """``Slicer/Slicer`` ``Libs/MRML/Widgets/qMRMLWidget.h``: a widget that holds a MRML scene."""

    CPP_SIGNALS = ("mrmlSceneChanged(vtkMRMLScene*)",)
    mrmlSceneChanged = pyqtSignal(object)

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self._scene = None

    @pyqtSlot(result=object)
    def mrmlScene(self) -> Any:
        return self._scene

    @pyqtSlot(object)
    def setMRMLScene(self, scene: Any) -> None:
        if scene is self._scene:
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    @pyqtSlot()
    def preInitializeApplication(self) -> None:
        raise HarnessError("qMRMLWidget.preInitializeApplication: the harness's application is already made")

    @pyqtSlot()
    def postInitializeApplication(self) -> None:
        raise HarnessError("qMRMLWidget.postInitializeApplication: the harness's application is already made")

    @pyqtSlot(QtGui.QIcon, result=QtGui.QPixmap)
    def pixmapFromIcon(self, icon: QtGui.QIcon) -> QtGui.QPixmap:
        return icon.pixmap(32, 32)


def vtk_modified_event() -> int:
    import vtk

    return vtk.vtkCommand.ModifiedEvent


def _vtk_observe(obj: Any, events: List[int], callback: Any) -> List[int]:
    from .pythonqt import record_error

    def observer(caller: Any, event: Any) -> None:
        try:
            callback()
        except Exception:
            record_error(f"VTK observer {callback!r}")

    return [obj.AddObserver(e, observer) for e in events]


class qMRMLNodeComboBox(QtWidgets.QWidget):
    """``Slicer/Slicer`` ``Libs/MRML/Widgets/qMRMLNodeComboBox.h``: the nodes of a scene, filtered by type.

    Listing follows the header's rules: nodes of ``nodeTypes`` (subclasses too when
    ``showChildNodeTypes``), minus ``hideChildNodeTypes``, minus nodes hidden from
    editors unless ``showHidden``, filtered by ``addAttribute``; an optional "None"
    item first. The first node becomes current when "None" is not allowed; a
    removed current node is replaced as QComboBox does. The add/remove/rename menu
    items are not listed (see the harness README).
    """

    CPP_SIGNALS = ("currentNodeChanged(vtkMRMLNode*)", "currentNodeIDChanged(QString)",
                   "nodeActivated(vtkMRMLNode*)", "currentNodeChanged(bool)", "nodeAdded(vtkMRMLNode*)",
                   "nodeAddedByUser(vtkMRMLNode*)", "nodeAddedByUserAction(vtkMRMLNode*)",
                   "nodeAboutToBeRemoved(vtkMRMLNode*)", "currentNodeRenamed(QString)",
                   "nodeAboutToBeEdited(vtkMRMLNode*)")
    currentNodeChanged = pyqtSignal([object], [bool])
    currentNodeIDChanged = pyqtSignal(str)
    nodeActivated = pyqtSignal(object)
    nodeAdded = pyqtSignal(object)
    nodeAddedByUser = pyqtSignal(object)
    nodeAddedByUserAction = pyqtSignal(object)
    nodeAboutToBeRemoved = pyqtSignal(object)
    currentNodeRenamed = pyqtSignal(str)
    nodeAboutToBeEdited = pyqtSignal(object)

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self._scene = None
        self._observations: List[int] = []
        self._nodeObservations: List[Any] = []  # (node, tag): names follow renames, as qMRMLSceneModel's items do
        self._nodes: List[Any] = []
        self._current = None
        self._attributes: Dict[str, Dict[str, Any]] = {}
        self._typeLabels: Dict[str, str] = {}
        self._v: Dict[str, Any] = {"nodeTypes": [], "showHidden": False, "showChildNodeTypes": True,
                                   "hideChildNodeTypes": [], "baseName": "", "noneEnabled": False,
                                   "addEnabled": True, "removeEnabled": True, "editEnabled": False,
                                   "renameEnabled": False, "interactionNodeSingletonTag": "Singleton",
                                   "selectNodeUponCreation": True, "noneDisplay": "None",
                                   "sizeAdjustPolicy": int(QtWidgets.QComboBox.AdjustToContentsOnFirstShow)}
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        layout.addWidget(self._combo)
        self._combo.currentIndexChanged.connect(self._onUserIndex)
        self._combo.activated.connect(lambda index: self.nodeActivated.emit(self._nodeAt(index)))
        self._updating = False
        self.setEnabled(False)  # until a scene is set, as the header says

    # -- properties (QString/QStringList/bool as declared) ----------------------------------------
    def _prop(name: str, kind: Any, refresh: bool = False) -> Any:  # noqa: N805 - property factory
        def setter(self: qMRMLNodeComboBox, value: Any) -> None:
            self._v[name] = list(value) if kind == "QStringList" else value
            if refresh:
                self._refresh()
        return pyqtProperty(kind, lambda self: self._v[name], setter)

    nodeTypes = _prop("nodeTypes", "QStringList", True)
    showHidden = _prop("showHidden", bool, True)
    showChildNodeTypes = _prop("showChildNodeTypes", bool, True)
    hideChildNodeTypes = _prop("hideChildNodeTypes", "QStringList", True)
    baseName = _prop("baseName", str)
    noneEnabled = _prop("noneEnabled", bool, True)
    addEnabled = _prop("addEnabled", bool)
    removeEnabled = _prop("removeEnabled", bool)
    editEnabled = _prop("editEnabled", bool)
    renameEnabled = _prop("renameEnabled", bool)
    interactionNodeSingletonTag = _prop("interactionNodeSingletonTag", str)
    selectNodeUponCreation = _prop("selectNodeUponCreation", bool)
    noneDisplay = _prop("noneDisplay", str, True)
    sizeAdjustPolicy = _prop("sizeAdjustPolicy", int)
    del _prop

    # uic sets designer properties through the C++ setters (public, not slots: hidden from PythonQt).
    def setNodeTypes(self, v: List[str]) -> None:
        self.setProperty("nodeTypes", v)

    def setShowChildNodeTypes(self, v: bool) -> None:
        self.setProperty("showChildNodeTypes", v)

    def setAddEnabled(self, v: bool) -> None:
        self.setProperty("addEnabled", v)

    def setRemoveEnabled(self, v: bool) -> None:
        self.setProperty("removeEnabled", v)

    def setRenameEnabled(self, v: bool) -> None:
        self.setProperty("renameEnabled", v)

    def setNoneEnabled(self, v: bool) -> None:
        self.setProperty("noneEnabled", v)

    def setNoneDisplay(self, v: str) -> None:
        self.setProperty("noneDisplay", v)

    def _currentNodeIDGet(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    currentNodeID = pyqtProperty(str, _currentNodeIDGet, lambda self, v: self.setCurrentNodeID(v),
                                 notify=currentNodeIDChanged)
    currentNodeId = pyqtProperty(str, _currentNodeIDGet, lambda self, v: self.setCurrentNodeID(v))

    # -- Q_INVOKABLE ------------------------------------------------------------------------------
    @pyqtSlot(result=object)
    def mrmlScene(self) -> Any:
        return self._scene

    @pyqtSlot(str, str)
    @pyqtSlot(str, str, "QVariant")
    def addAttribute(self, nodeType: str, name: str, value: Any = None) -> None:
        self._attributes.setdefault(nodeType, {})[name] = value
        self._refresh()

    @pyqtSlot(str, str)
    def removeAttribute(self, nodeType: str, name: str) -> None:
        self._attributes.get(nodeType, {}).pop(name, None)
        self._refresh()

    @pyqtSlot(str, str)
    def setNodeTypeLabel(self, label: str, nodeType: str) -> None:
        self._typeLabels[nodeType] = label

    @pyqtSlot(str, result=str)
    def nodeTypeLabel(self, nodeType: str) -> str:
        return self._typeLabels.get(nodeType, nodeType)

    @pyqtSlot(result=int)
    def nodeCount(self) -> int:
        return len(self._nodes)

    @pyqtSlot(int, result=object)
    def nodeFromIndex(self, index: int) -> Any:
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    @pyqtSlot(result=object)
    def currentNode(self) -> Any:
        return self._current

    @pyqtSlot(result=object)
    def sortFilterProxyModel(self) -> Any:
        raise HarnessError("qMRMLNodeComboBox.sortFilterProxyModel(): the harness has no qMRMLSortFilterProxyModel")

    @pyqtSlot(QtWidgets.QAction)
    def addMenuAction(self, action: QtWidgets.QAction) -> None:
        raise HarnessError("qMRMLNodeComboBox.addMenuAction(): the harness lists no menu actions")

    # -- public slots -------------------------------------------------------------------------------
    @pyqtSlot(object)
    def setMRMLScene(self, scene: Any) -> None:
        if scene is self._scene:
            return
        if self._scene is not None:
            for tag in self._observations:
                self._scene.RemoveObserver(tag)
        self._scene = scene
        self._observations = []
        if scene is not None:
            import slicer

            S = slicer.vtkMRMLScene
            self._observations = _vtk_observe(scene, [S.NodeAddedEvent, S.NodeRemovedEvent, S.EndCloseEvent,
                                                      S.EndImportEvent, S.EndRestoreEvent], self._refresh)
        self.setEnabled(scene is not None)
        self._refresh()

    @pyqtSlot(object)
    @pyqtSlot(str)
    def setCurrentNode(self, node: Any) -> None:
        if isinstance(node, str):
            self.setCurrentNodeID(node)
            return
        if node is not None and node not in self._nodes:
            logging.warning("qMRMLNodeComboBox::setCurrentNode: node %s is not listed", node.GetID())
            node = None
        self._select(node)

    @pyqtSlot(str)
    def setCurrentNodeID(self, nodeID: str) -> None:
        node = self._scene.GetNodeByID(nodeID) if (self._scene is not None and nodeID) else None
        self.setCurrentNode(node)

    @pyqtSlot(int)
    def setCurrentNodeIndex(self, index: int) -> None:
        self._select(self.nodeFromIndex(index))

    @pyqtSlot(result=object)
    @pyqtSlot(str, result=object)
    def addNode(self, nodeType: str = "") -> Any:
        types = self._v["nodeTypes"]
        nodeType = nodeType or (types[0] if types else "")
        if self._scene is None or nodeType not in types:
            return None
        node = self._scene.AddNewNodeByClass(nodeType, self._v["baseName"] or nodeType.replace("vtkMRML", ""))
        self.nodeAddedByUserAction.emit(node)
        if self._v["selectNodeUponCreation"]:
            self.setCurrentNode(node)
        return node

    @pyqtSlot()
    def removeCurrentNode(self) -> None:
        if self._scene is not None and self._current is not None:
            self._scene.RemoveNode(self._current)

    @pyqtSlot()
    def editCurrentNode(self) -> None:
        self.nodeAboutToBeEdited.emit(self._current)

    @pyqtSlot()
    def renameCurrentNode(self) -> None:
        raise HarnessError("qMRMLNodeComboBox.renameCurrentNode() opens an input dialog")

    # -- the list -----------------------------------------------------------------------------------
    def _matches(self, node: Any) -> bool:
        types = self._v["nodeTypes"]
        if self._v["showChildNodeTypes"]:
            ok = any(node.IsA(t) for t in types)
        else:
            ok = node.GetClassName() in types
        if not ok or any(node.IsA(t) for t in self._v["hideChildNodeTypes"]):
            return False
        if node.GetHideFromEditors() and not self._v["showHidden"]:
            return False
        for nodeType, attributes in self._attributes.items():
            if node.IsA(nodeType):
                for name, value in attributes.items():
                    have = node.GetAttribute(name)
                    if have is None or (value is not None and str(value) != have):
                        return False
        return True

    def _refresh(self) -> None:
        scene = self._scene
        nodes = []
        if scene is not None:
            for i in range(scene.GetNumberOfNodes()):
                node = scene.GetNthNode(i)
                if node is not None and self._matches(node):
                    nodes.append(node)
        for node, tag in self._nodeObservations:
            node.RemoveObserver(tag)
        self._nodes = nodes
        self._nodeObservations = [(node, tag) for node in nodes
                                  for tag in _vtk_observe(node, [vtk_modified_event()], self._renamed)]
        current = self._current if self._current in nodes else None
        if current is None and not self._v["noneEnabled"] and nodes:
            current = nodes[0]  # QComboBox makes the first row current; with no "None" row it is a node
        self._updating = True
        try:
            self._combo.clear()
            if self._v["noneEnabled"]:
                self._combo.addItem(self._v["noneDisplay"])
            for node in nodes:
                self._combo.addItem(node.GetName() or node.GetID())
        finally:
            self._updating = False
        self._select(current, force=True)

    def _renamed(self) -> None:
        offset = 1 if self._v["noneEnabled"] else 0
        for index, node in enumerate(self._nodes):
            name = node.GetName() or node.GetID()
            if self._combo.itemText(index + offset) != name:
                self._combo.setItemText(index + offset, name)

    def _nodeAt(self, comboIndex: int) -> Any:
        index = comboIndex - (1 if self._v["noneEnabled"] else 0)
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def _onUserIndex(self, comboIndex: int) -> None:
        if not self._updating:
            self._select(self._nodeAt(comboIndex))

    def _select(self, node: Any, force: bool = False) -> None:
        index = (self._nodes.index(node) if node in self._nodes else -1)
        comboIndex = index + (1 if self._v["noneEnabled"] else 0) if node is not None else (
            0 if self._v["noneEnabled"] else -1)
        self._updating = True
        try:
            self._combo.setCurrentIndex(comboIndex)
        finally:
            self._updating = False
        if node is self._current:
            return
        self._current = node
        self.currentNodeChanged[object].emit(node)
        self.currentNodeChanged[bool].emit(node is not None)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def displayedText(self) -> str:
        """What the user reads in the box (a harness helper, not a slot)."""
        return self._combo.currentText()

    def chooseAsUser(self, node: Any) -> None:
        """Pick ``node`` in the drop-down, as a click does (a harness helper, not a slot)."""
        comboIndex = self._nodes.index(node) + (1 if self._v["noneEnabled"] else 0) if node is not None else 0
        self._combo.setCurrentIndex(comboIndex)
        self._combo.activated.emit(comboIndex)


class qMRMLSegmentationShow3DButton(QtWidgets.QPushButton):
    """``Slicer/Slicer`` ``Modules/Loadable/Segmentations/Widgets/qMRMLSegmentationShow3DButton.h``.

    A ctkMenuButton there (its smoothing menu is not modelled): checked when the
    segmentation has a closed-surface representation; toggling creates or removes it.
    """

    CPP_SIGNALS = ()

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self._node = None
        self._locked = False
        self.setText("Show 3D")
        self.setCheckable(True)
        self.setEnabled(False)
        self.toggled.connect(self._onToggled)

    @pyqtSlot(result=object)
    def segmentationNode(self) -> Any:
        return self._node

    @pyqtSlot(object)
    def setSegmentationNode(self, node: Any) -> None:
        self._node = node
        self._update()

    @pyqtSlot(bool)
    def setLocked(self, locked: bool) -> None:
        self._locked = bool(locked)
        self._update()

    locked = pyqtProperty(bool, lambda self: self._locked, setLocked)

    def _update(self) -> None:
        node = self._node
        self.setEnabled(node is not None and not self._locked)
        has = bool(node is not None and node.GetSegmentation() is not None
                   and node.GetSegmentation().ContainsRepresentation("Closed surface"))
        self.blockSignals(True)
        self.setChecked(has)
        self.blockSignals(False)

    def _onToggled(self, on: bool) -> None:
        node = self._node
        if node is None:
            return
        if on:
            node.CreateClosedSurfaceRepresentation()
            if node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetVisibility3D(True)
        else:
            node.RemoveClosedSurfaceRepresentation()
        self._update()  # updateWidgetFromMRML: the node's events may have come mid-conversion


class qMRMLSegmentEditorWidget(qMRMLWidget):
    """``Slicer/Slicer`` ``Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h``, the part
    a module hands a segmentation to (Slicer >= 5.2 names: source volume). Backed by the real
    ``vtkMRMLSegmentEditorNode``; the editing effects are not there."""

    CPP_SIGNALS = ("mrmlSceneChanged(vtkMRMLScene*)",)

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self._editorNode = None

    @pyqtSlot(result=object)
    def mrmlSegmentEditorNode(self) -> Any:
        return self._editorNode

    @pyqtSlot(object)
    def setMRMLSegmentEditorNode(self, node: Any) -> None:
        self._editorNode = node

    def _need(self) -> Any:
        if self._editorNode is None:
            raise HarnessError("Segment Editor: no segment editor node set")
        return self._editorNode

    @pyqtSlot(result=object)
    def segmentationNode(self) -> Any:
        return self._editorNode.GetSegmentationNode() if self._editorNode else None

    @pyqtSlot(object)
    def setSegmentationNode(self, node: Any) -> None:
        self._need().SetAndObserveSegmentationNode(node)

    @pyqtSlot(result=object)
    def sourceVolumeNode(self) -> Any:
        return self._editorNode.GetSourceVolumeNode() if self._editorNode else None

    @pyqtSlot(object)
    def setSourceVolumeNode(self, node: Any) -> None:
        self._need().SetAndObserveSourceVolumeNode(node)

    @pyqtSlot(result=str)
    def currentSegmentID(self) -> str:
        return (self._editorNode.GetSelectedSegmentID() or "") if self._editorNode else ""

    @pyqtSlot(str)
    def setCurrentSegmentID(self, segmentID: str) -> None:
        self._need().SetSelectedSegmentID(segmentID)


#: Custom widgets a .ui file may name, by class (uic imports them by header name).
CUSTOM_WIDGETS = {cls.__name__: cls for cls in (ctkCollapsibleButton, ctkPathLineEdit, qMRMLWidget,
                                                 qMRMLNodeComboBox, qMRMLSegmentationShow3DButton)}
