"""Give freed heap back to the operating system.

glibc keeps freed pages mapped unless asked, so a process that once peaked (a model run,
a large reconcile) would hold that memory while idle; other C libraries have no
malloc_trim, and there this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_LIBC = ctypes.util.find_library("c")
_malloc_trim = getattr(ctypes.CDLL(_LIBC), "malloc_trim", None) if _LIBC else None


def trim_heap() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)
