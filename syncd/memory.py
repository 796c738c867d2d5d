"""Give freed heap back to the operating system.

glibc keeps freed pages mapped unless asked, so a process that once peaked (a model run,
a large reconcile) would hold that memory while idle; other C libraries have no
malloc_trim, and there this does nothing.
"""

from __future__ import annotations

import ctypes

# The symbols the interpreter was linked with, libc's among them. Not find_library("c"),
# which runs /sbin/ldconfig at import: a process, 10 ms, for every command that trims.
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)


def trim_heap() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)
