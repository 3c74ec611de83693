"""Work-arounds for bugs in the Qt binding, kept in one place.

``emit``: with PySide6 6.12.0 on Python 3.11, ``SignalInstance.emit()`` returns ``True`` without taking a reference
to it, so every emit made from Python takes one reference away from the ``True`` singleton. After a few hundred
emits the count reaches zero and the interpreter aborts ("Fatal Python error: bool_dealloc: deallocating True or
False"), often at exit, far from the cause. Python 3.12 made ``True`` immortal, so there the bug does no harm.
A probe at import measures whether this binding drops the reference; when it does, ``emit`` hands it back.
Every signal that slowtune's GUI emits from Python goes through ``emit`` (tests/test_gui_workers.py checks).

``None``: the same binding also returns ``None`` from every Qt method that returns nothing (``setText``, ``show``,
``processEvents``...) without its reference, so a session of a few thousand such calls ends in "none_dealloc".
pyproject.toml keeps PySide6 below 6.12 for this; should a binding with the bug be installed anyway, a probe at
import finds it and gives ``None`` references enough for any session (as Python 3.12 does by making it immortal).
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal, SignalInstance

_PROBE_EMITS = 16


class _Probe(QObject):
    ping = Signal()


def _emit_drops_a_reference() -> bool:
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(_PROBE_EMITS):
        probe.ping.emit()
    lost = before - sys.getrefcount(True)
    for _ in range(max(0, lost)):  # give back what the probe itself took
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
    return lost >= _PROBE_EMITS


EMIT_DROPS_REFERENCE = _emit_drops_a_reference()


def _void_calls_drop_a_reference() -> bool:
    probe = _Probe()
    before = sys.getrefcount(None)
    for _ in range(_PROBE_EMITS):
        probe.setObjectName("probe")
    return before - sys.getrefcount(None) >= _PROBE_EMITS


VOID_CALLS_DROP_NONE = _void_calls_drop_a_reference()
if VOID_CALLS_DROP_NONE:
    ctypes.c_ssize_t.from_address(id(None)).value += 1 << 40


def emit(signal: SignalInstance, *args: object) -> None:
    """``signal.emit(*args)``, safe from the reference bug described above."""
    result = signal.emit(*args)
    if EMIT_DROPS_REFERENCE:
        # The binding returned `result` without the reference a return value owns; supply it, so that dropping
        # `result` here leaves the singleton's count as it was.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))
