"""Processes syncd starts die with it, even when it is killed with -9."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Called first thing in a child: SIGKILL it when the thread that started it ends
    (so start a child from a thread that lives as long as the child should), and exit
    now if `parent` is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
