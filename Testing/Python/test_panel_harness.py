"""The harness itself: PythonQt's rules hold, its widget classes declare what their headers declare, and
every ``ui.<widget>.<member>`` the module's code touches exists as that kind of member."""

from __future__ import annotations

import ast
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheels (pip install '.[test]')")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install '.[test]')")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing" / "SlicerHarness"))

from PyQt5 import QtCore, QtWidgets  # noqa: E402
from slicer_harness import HarnessError, member_kind, widgets, wrap  # noqa: E402
from slicer_harness.pythonqt import find_signal  # noqa: E402

APP = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["harness-test"])
UI_FILE = next(p for p in (REPO / "CAMLSegmentation" / "Resources" / "UI" / "CAMLSegmentation.ui",
                           REPO / "Resources" / "UI" / "CAMLSegmentation.ui") if p.exists())


def test_pythonqt_rules():
    box = wrap(QtWidgets.QCheckBox())
    box.checked = True  # a Q_PROPERTY: an attribute
    assert box.checked is True and box.isChecked()
    with pytest.raises(AttributeError, match="Slot 'checkState' can not be overwritten"):
        box.checkState = QtCore.Qt.Checked  # a method: PythonQt refuses the assignment
    with pytest.raises(AttributeError, match="creating new attributes on C\\+\\+ objects is not allowed"):
        box.lookLikeAProperty = 1
    label = wrap(QtWidgets.QLabel())
    label.text = "hello"
    assert label.text == "hello"  # the property, not PyQt's text() method
    combo = wrap(QtWidgets.QComboBox())
    combo.addItem("a", "x")
    assert combo.currentIndex == 0 and combo.currentData == "x"
    calls = []
    button = wrap(QtWidgets.QPushButton())
    button.connect("clicked(bool)", lambda: calls.append("no-arg slot"))  # fewer arguments: fine
    button.connect("toggled(bool)", calls.append)
    button.checkable = True
    button.click()
    assert sorted(map(str, calls)) == ["True", "no-arg slot"]  # toggled(bool) comes before clicked(bool)
    with pytest.raises(HarnessError, match="no signal"):
        button.connect("clicked(int)", print)
    node_box = wrap(widgets.qMRMLNodeComboBox())
    with pytest.raises(HarnessError, match="no signal"):
        node_box.connect("currentNodeChanged(QString)", print)  # not in qMRMLNodeComboBox.h
    with pytest.raises(AttributeError):
        node_box.nodes()  # a public C++ method but no slot: PythonQt does not see it


@pytest.mark.parametrize("cls", [widgets.ctkCollapsibleButton, widgets.ctkPathLineEdit, widgets.qMRMLWidget,
                                 widgets.qMRMLNodeComboBox, widgets.qMRMLSegmentationShow3DButton,
                                 widgets.qMRMLSegmentEditorWidget, widgets.ctkMessageBox])
def test_widget_classes_declare_the_signals_of_their_headers(cls):
    meta = cls.staticMetaObject
    own = set()
    for i in range(meta.methodOffset(), meta.methodCount()):
        method = meta.method(i)
        if method.methodType() == QtCore.QMetaMethod.Signal:
            own.add(bytes(method.methodSignature()).decode())
    inherited = {s for s in cls.CPP_SIGNALS if cls.__mro__[1].staticMetaObject.indexOfSignal(
        bytes(QtCore.QMetaObject.normalizedSignature(s)).decode().replace("vtkMRMLScene*", "PyQt_PyObject")) >= 0}
    declared = {bytes(QtCore.QMetaObject.normalizedSignature(s)).decode() for s in cls.CPP_SIGNALS} - inherited
    as_pyqt = {s.split("(")[0] + "(" + ",".join("PyQt_PyObject" if a.startswith("vtk") else a
                                                 for a in s.split("(")[1][:-1].split(",") if a) + ")"
               for s in declared}
    assert own == as_pyqt, f"{cls.__name__}: meta-object {sorted(own)} vs header {sorted(declared)}"
    assert cls.__doc__ and ".h" in cls.__doc__, "name the header in the docstring"


# -- the static check ------------------------------------------------------------------------------------

def _ui_classes():
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def _python_class(name: str):
    return widgets.CUSTOM_WIDGETS.get(name) or getattr(QtWidgets, name)


def _uses(source: str):
    """(widget, member, how) for every ``self.ui.W.M`` / ``ui.W.M`` in the module: how is store, call,
    connect:<signature> or load."""
    tree = ast.parse(source)
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
            continue
        base = node.value.value
        is_ui = (isinstance(base, ast.Name) and base.id == "ui") or (
            isinstance(base, ast.Attribute) and base.attr == "ui")
        if not is_ui:
            continue
        widget, member, parent = node.value.attr, node.attr, parents.get(node)
        if isinstance(node.ctx, ast.Store):
            how = "store"
        elif isinstance(parent, ast.Call) and parent.func is node:
            how = "call"
            if member == "connect" and parent.args and isinstance(parent.args[0], ast.Constant):
                how = "connect:" + parent.args[0].value
        else:
            how = "load"
        yield widget, member, how, node.lineno
    # ``for widget in (ui.a, ui.b): widget.enabled = ...`` and ``for combo in (...): combo.connect(...)``
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, ast.Tuple):
            names = [e.attr for e in node.iter.elts if isinstance(e, ast.Attribute)]
            for inner in ast.walk(node):
                if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) \
                        and inner.value.id == node.target.id:
                    parent = parents.get(inner)
                    if isinstance(inner.ctx, ast.Store):
                        how = "store"
                    elif isinstance(parent, ast.Call) and parent.func is inner:
                        how = "call"
                        if inner.attr == "connect" and isinstance(parent.args[0], ast.Constant):
                            how = "connect:" + parent.args[0].value
                    else:
                        how = "load"
                    for name in names:
                        yield name, inner.attr, how, inner.lineno


def test_every_ui_member_the_module_uses_exists_as_that_kind_of_member():
    source = (REPO / "CAMLSegmentation" / "CAMLSegmentation.py").read_text()
    classes = _ui_classes()
    problems, checked = [], 0
    instances = {}
    for widget, member, how, line in _uses(source):
        if widget not in classes:
            problems.append(f"line {line}: ui.{widget} is not in the .ui file")
            continue
        cls = _python_class(classes[widget])
        kind, real = member_kind(cls, member)
        checked += 1
        if how.startswith("connect:"):
            obj = instances.setdefault(cls, cls())
            try:
                find_signal(obj, how.split(":", 1)[1])
            except HarnessError as exc:
                problems.append(f"line {line}: ui.{widget}.connect: {exc}")
        elif how == "store":
            writable = kind == "property" and cls.staticMetaObject.property(
                cls.staticMetaObject.indexOfProperty(real)).isWritable()
            if not writable:
                problems.append(f"line {line}: ui.{widget}.{member} = ...: {classes[widget]}.{member} is "
                                f"{kind or 'missing'}, not a writable property")
        elif how == "call" and kind not in ("method", "signal"):
            problems.append(f"line {line}: ui.{widget}.{member}(): {classes[widget]}.{member} is "
                            f"{kind or 'missing'}, not a method")
        elif how == "load" and kind != "property":
            problems.append(f"line {line}: ui.{widget}.{member} read: {classes[widget]}.{member} is "
                            f"{kind or 'missing'}, not a property (a bound method is never a value)")
    assert checked > 60
    assert not problems, "\n".join(problems)


def test_the_static_check_sees_the_old_checkstate_bug():
    bad = ("class W:\n    def f(self):\n        self.ui.lccCheckBox.checkState = 1\n"
           "        state = self.ui.lccCheckBox.checkState\n")
    found = [(w, m, how) for w, m, how, _ in _uses(bad)]
    assert ("lccCheckBox", "checkState", "store") in found and ("lccCheckBox", "checkState", "load") in found
    assert member_kind(QtWidgets.QCheckBox, "checkState")[0] == "method"
