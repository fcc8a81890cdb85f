"""PythonQt's rules, applied to real PyQt5 objects.

Inside Slicer, Python sees Qt objects through PythonQt (``commontk/PythonQt``,
``src/PythonQtInstanceWrapper.cpp`` and ``src/PythonQtClassInfo.cpp``), whose
attribute rules differ from PyQt's:

- a name is looked up as a Q_PROPERTY first (``button.enabled``, ``label.text``;
  ``name`` falls back to ``objectName``), then as a method (public slots,
  Q_INVOKABLEs and signals of the meta-object, plus the generated wrappers of
  Qt's own classes), then as an enum value, a dynamic property, a child by
  object name;
- assigning to a property writes it (a property that is not writable, or a
  value it does not accept, raises ``AttributeError``); assigning to a slot or
  a signal raises ``AttributeError`` ("can not be overwritten"), and so does
  creating a new attribute on a wrapped C++ object;
- ``obj.connect("signal(args)", callable)`` connects by signature string; the
  callable gets as many of the signal's arguments as it takes.

``PythonQtObject`` wraps a PyQt5 object and applies these rules, so code that
works here works the same way inside Slicer. Where PythonQt only prints a
message (a signal that does not exist, an exception in a slot), the harness
records a ``HarnessError`` that fails the test.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from PyQt5 import QtCore, sip


class HarnessError(AssertionError):
    """Something Slicer would not accept, or that the harness refuses to fake: it fails the test."""


#: Errors raised inside slots, timers and observers (PythonQt and VTK print them; the harness keeps them).
SLOT_ERRORS: List[str] = []


def record_error(where: str) -> None:
    text = f"{where}:\n{traceback.format_exc()}"
    SLOT_ERRORS.append(text)
    logging.error(text)


# -- member lookup -------------------------------------------------------------------------------

def native_class(cls: type) -> type:
    """The first Qt class (from PyQt5 itself) in ``cls``'s bases: what PythonQt's generated wrappers cover."""
    for base in cls.__mro__:
        if base.__module__.startswith("PyQt5."):
            return base
    return object


def _meta_name(method: Any) -> str:
    return bytes(method.name()).decode()


@functools.cache
def member_kind(cls: type, name: str) -> Tuple[Optional[str], str]:
    """How PythonQt resolves ``name`` on an instance of ``cls``: ("property"|"method"|"signal"|"enum"|None, real name).

    Harness classes (the CTK/qMRML/Slicer stand-ins, defined in Python) expose only what
    their meta-object declares, as PythonQt does for classes without generated wrappers;
    Qt's own classes also expose every public method PyQt5 has (PythonQt's wrappers).
    """
    if isinstance(cls, type) and issubclass(cls, QtCore.QObject):
        meta = cls.staticMetaObject
        real = name
        if meta.indexOfProperty(name) < 0 and name == "name":
            real = "objectName"
        if meta.indexOfProperty(real) >= 0:
            return "property", real
        for i in range(meta.methodCount()):
            method = meta.method(i)
            if _meta_name(method) != name:
                continue
            if method.methodType() == QtCore.QMetaMethod.Signal:
                return "signal", name
            if method.access() == QtCore.QMetaMethod.Public:
                return "method", name
    exposed = getattr(cls, "PYTHONQT_WRAPPED", ())  # C++ public methods PythonQt wraps for a harness class
    if name in exposed:
        return "method", name
    native = native_class(cls)
    if name.startswith("_"):
        return None, name
    attr = getattr(native, name, None)
    if attr is None:
        return None, name
    if isinstance(attr, int) or type(attr).__name__ in ("EnumType", "enumtype") or isinstance(attr, type):
        return "enum", name
    if callable(attr) and not isinstance(attr, QtCore.pyqtSignal):
        return "method", name
    return None, name


# -- wrapping ------------------------------------------------------------------------------------

_REGISTRY: Dict[int, PythonQtObject] = {}


def wrap(value: Any) -> Any:
    """PyQt5 values as PythonQt gives them to Python: QObjects wrapped (one wrapper per object)."""
    if isinstance(value, QtCore.QObject):
        if sip.isdeleted(value):
            return None
        key = sip.unwrapinstance(value)
        proxy = _REGISTRY.get(key)
        if proxy is None or sip.isdeleted(proxy._qobj) or proxy._qobj is not value:
            proxy = PythonQtObject(value)
            _REGISTRY[key] = proxy
        return proxy
    if isinstance(value, list):
        return [wrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    return value


def unwrap(value: Any) -> Any:
    if isinstance(value, PythonQtObject):
        return value._qobj
    if isinstance(value, PythonQtClass):
        return value._cls
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(unwrap(v) for v in value)
    return value


def _positional_capacity(func: Callable) -> Optional[int]:
    """How many positional arguments ``func`` takes (None: any number), as PythonQt counts them."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def python_slot(func: Callable, where: str) -> Callable:
    """A Python callable connected to a Qt signal: gets what it can take; an exception is recorded, not raised."""
    capacity = _positional_capacity(func)

    def call(*args: Any) -> None:
        args = tuple(wrap(a) for a in args)
        if capacity is not None:
            args = args[:capacity]
        try:
            func(*args)
        except Exception:
            record_error(f"exception in {where} -> {getattr(func, '__qualname__', func)!r}")

    call.__wrapped_slot__ = func  # type: ignore[attr-defined]
    return call


def _pyqt_signature(signature: str) -> str:
    """A C++ signature as the harness's PyQt5 meta-objects spell it: VTK pointers are Python objects."""
    normal = bytes(QtCore.QMetaObject.normalizedSignature(signature)).decode()
    name, _, rest = normal.partition("(")
    args = [a for a in rest[:-1].split(",") if a]
    args = ["PyQt_PyObject" if (a.startswith("vtk") and a.endswith("*")) else a for a in args]
    return f"{name}({','.join(args)})"


def find_signal(qobj: QtCore.QObject, signature: str) -> Tuple[str, List[str]]:
    """The signal ``signature`` names on ``qobj`` (name, PyQt argument types), or HarnessError."""
    cls = type(qobj)
    declared = getattr(cls, "CPP_SIGNALS", None)
    normal = bytes(QtCore.QMetaObject.normalizedSignature(signature)).decode()
    if declared is not None and native_class(cls) is not cls:
        own = {bytes(QtCore.QMetaObject.normalizedSignature(s)).decode() for s in declared}
        meta_own = cls.staticMetaObject
        own_names = {_meta_name(meta_own.method(i)) for i in range(meta_own.methodOffset(), meta_own.methodCount())}
        if normal.split("(")[0] in own_names and normal not in own:
            raise HarnessError(f"{cls.__name__} has no signal {signature!r} (its header declares {sorted(own)})")
    wanted = _pyqt_signature(signature)
    meta = qobj.metaObject()
    for i in range(meta.methodCount()):
        method = meta.method(i)
        if method.methodType() != QtCore.QMetaMethod.Signal:
            continue
        if bytes(method.methodSignature()).decode() == wanted:
            return _meta_name(method), [bytes(t).decode() for t in method.parameterTypes()]
    raise HarnessError(f"{meta.className()} has no signal {signature!r}: PythonQt would print "
                       "'signal does not exist' and never call the slot")


def _bound_signal(qobj: QtCore.QObject, name: str, types: List[str]) -> Any:
    signal = getattr(qobj, name)
    if not types:
        try:
            return signal[()]
        except (KeyError, TypeError, IndexError):
            return signal
    key = types[0] if len(types) == 1 else tuple(types)
    return signal[key]


# -- the wrappers ---------------------------------------------------------------------------------

class PythonQtSignal:
    """``obj.someSignal`` under PythonQt: connect/disconnect a callable, or call it to emit."""

    def __init__(self, owner: PythonQtObject, name: str) -> None:
        self._owner = owner
        self._name = name

    def connect(self, slot: Callable) -> bool:
        meta = self._owner._qobj.metaObject()
        for i in range(meta.methodCount()):
            method = meta.method(i)
            if method.methodType() == QtCore.QMetaMethod.Signal and _meta_name(method) == self._name:
                return self._owner.connect(bytes(method.methodSignature()).decode(), slot)
        raise HarnessError(f"no signal {self._name}")

    def disconnect(self, slot: Callable) -> bool:
        return self._owner.disconnect(self._name, slot)

    def __call__(self, *args: Any) -> None:
        getattr(self._owner._qobj, self._name).emit(*unwrap(args))


class PythonQtObject:
    """A QObject as PythonQt shows it to Python (see the module docstring for the rules)."""

    __slots__ = ("_qobj", "_connections", "__weakref__")

    def __init__(self, qobj: QtCore.QObject) -> None:
        object.__setattr__(self, "_qobj", qobj)
        object.__setattr__(self, "_connections", [])

    def _live(self, name: str) -> QtCore.QObject:
        qobj = self._qobj
        if sip.isdeleted(qobj):
            raise ValueError(f"Trying to access '{name}' on a destroyed object")
        return qobj

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        qobj = self._live(name)
        kind, real = member_kind(type(qobj), name)
        if kind == "property":
            return wrap(qobj.property(real))
        if kind == "signal":
            return PythonQtSignal(self, name)
        if kind == "method":
            return _method(getattr(qobj, name), f"{type(qobj).__name__}.{name}")
        if kind == "enum":
            return getattr(qobj, name)
        if name in [bytes(n).decode() for n in qobj.dynamicPropertyNames()]:
            return wrap(qobj.property(name))
        for child in qobj.children():
            if child.objectName() == name:
                return wrap(child)
        raise AttributeError(f"{qobj.metaObject().className()} has no attribute named '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        qobj = self._live(name)
        kind, real = member_kind(type(qobj), name)
        cls = qobj.metaObject().className()
        if kind == "property":
            prop = qobj.metaObject().property(qobj.metaObject().indexOfProperty(real))
            if not prop.isWritable():
                raise AttributeError(f"Property '{name}' of {cls} object is not writable")
            if not qobj.setProperty(real, unwrap(value)):
                raise AttributeError(f"Property '{name}' of type '{prop.typeName()}' does not accept "
                                     f"an object of type {type(value).__name__} ({value!r})")
            return
        if kind == "method":
            raise AttributeError(f"Slot '{name}' can not be overwritten on {cls} object")
        if kind == "signal":
            raise AttributeError(f"Signal '{name}' can not be overwritten on {cls} object")
        if kind == "enum":
            raise AttributeError(f"EnumValue '{name}' can not be overwritten on {cls} object")
        if name in [bytes(n).decode() for n in qobj.dynamicPropertyNames()]:
            qobj.setProperty(name, unwrap(value))
            return
        raise AttributeError(f"'{name}' does not exist on {cls} and creating new attributes on C++ objects "
                             "is not allowed")

    # QObject's decorators in PythonQt (PythonQtStdDecorators): connect, disconnect, className.
    def connect(self, signal: str, slot: Any, receiverSlot: Optional[str] = None) -> bool:
        qobj = self._live("connect")
        name, types = find_signal(qobj, signal)
        bound = _bound_signal(qobj, name, types)
        if receiverSlot is not None:  # connect(signal, receiver, "slot(args)")
            receiver = unwrap(slot)
            slotName = receiverSlot.split("(")[0]
            if member_kind(type(receiver), slotName)[0] != "method":
                raise HarnessError(f"{type(receiver).__name__} has no slot {receiverSlot!r}")
            target = python_slot(getattr(receiver, slotName), f"{signal} -> {receiverSlot}")
        else:
            if not callable(slot):
                raise HarnessError(f"connect({signal!r}, {slot!r}): the slot is not callable")
            target = python_slot(slot, f"signal {signal} of {qobj.metaObject().className()} "
                                       f"'{qobj.objectName()}'")
        bound.connect(target)
        self._connections.append((name, slot, bound, target))
        return True

    def disconnect(self, signal: str, slot: Any = None) -> bool:
        name = signal.split("(")[0]
        kept, done = [], False
        for entry in self._connections:
            if entry[0] == name and (slot is None or entry[1] == slot):
                entry[2].disconnect(entry[3])
                done = True
            else:
                kept.append(entry)
        object.__setattr__(self, "_connections", kept)
        return done

    def className(self) -> str:
        return self._live("className").metaObject().className()

    def __bool__(self) -> bool:
        return not sip.isdeleted(self._qobj)

    def __repr__(self) -> str:
        if sip.isdeleted(self._qobj):
            return "<destroyed QObject>"
        return f"{self._qobj.metaObject().className()} (QObject '{self._qobj.objectName()}')"


def _method(bound: Callable, where: str) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        args = tuple(unwrap(a) for a in args)
        args = tuple(python_slot(a, where) if (callable(a) and not isinstance(a, (type, QtCore.QObject))
                                                and not hasattr(a, "__wrapped_slot__")
                                                and inspect.isroutine(a)) else a for a in args)
        return wrap(bound(*args, **{k: unwrap(v) for k, v in kwargs.items()}))

    call.__name__ = where
    return call


class PythonQtClass:
    """``qt.QTimer``, ``qt.QMessageBox``...: calling it makes a wrapped instance; class members as PythonQt has them."""

    def __init__(self, cls: type) -> None:
        self._cls = cls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return wrap(self._cls(*unwrap(args), **{k: unwrap(v) for k, v in kwargs.items()}))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._cls, name)
        if inspect.isroutine(attr) or type(attr).__name__ == "builtin_function_or_method":
            return _method(attr, f"{self._cls.__name__}.{name}")
        return attr

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(unwrap(obj), self._cls)

    def __repr__(self) -> str:
        return f"<PythonQt class {self._cls.__name__}>"
