"""Renewing per-process state in a forked child (gunicorn's ``preload_app``, multiprocessing).

A lock held by a parent's thread at ``fork()`` would never be released in the child, whose only
thread is the one that forked, and the parent's threads and pooled connections are not the
child's.  Objects that own such things register a method with :func:`renew_in_child`; it runs in
each child right after the fork, while the child still has a single thread.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable

__all__ = ["renew_in_child"]

_methods: list[weakref.WeakMethod[Any]] = []
_lock = threading.Lock()


def renew_in_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child forked from now on, for as long as its object lives
    (not at all on platforms without ``fork``)."""
    with _lock:
        _methods[:] = [ref for ref in _methods if ref() is not None]
        _methods.append(weakref.WeakMethod(method))


def _in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by one of its threads
    for ref in list(_methods):
        method = ref()
        if method is not None:
            method()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_in_child)
