"""Native thread pools (BLAS, OpenMP) sized to the job's cores, in a runner reused by jobs
of every size.

Two halves, because a pool is sized when its library loads *and* whenever it is told:

- Before anything of a job is unpickled, the runner sets ``OMP_NUM_THREADS`` and friends
  (the worker sends them with the job), so a library first loaded by this job (``import
  numpy`` at the top of the user's script runs while the function is unpickled) starts
  with the right size, and so do the job's subprocesses.
- After unpickling, ``ThreadPools.fit(n)`` resizes every pool already loaded, through
  threadpoolctl, to ``n`` threads: a pool loaded by an earlier job of another size keeps
  its old size otherwise (OpenBLAS reads its variable only once).

Checking the pools costs about a microsecond per job. Listing the loaded libraries costs
about a millisecond, so it is redone only when a shared library was loaded since the last
look: glibc counts them (``dlpi_adds`` of ``dl_iterate_phdr``, read in ~2 µs), whoever
loads them (an import, ``ctypes.CDLL``, a library loading another). Without that counter
(another libc) the number of imported modules stands in for it.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any


class _PhdrInfo(ctypes.Structure):
    """The head of glibc's ``struct dl_phdr_info``."""

    _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p),
                ("phdr", ctypes.c_void_p), ("phnum", ctypes.c_uint16),
                ("adds", ctypes.c_ulonglong), ("subs", ctypes.c_ulonglong)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t,
                             ctypes.c_void_p)


def _library_counter() -> Callable[[], int]:
    """A function returning a number that changes whenever a shared library is loaded or
    unloaded in this process."""
    try:
        iterate = ctypes.CDLL(None).dl_iterate_phdr
    except (OSError, AttributeError):
        return lambda: len(sys.modules)
    box = [0]
    needed = _PhdrInfo.subs.offset + ctypes.sizeof(ctypes.c_ulonglong)

    def first(info: Any, size: int, data: Any) -> int:
        if size >= needed:
            box[0] = info.contents.adds * 2 ** 32 + info.contents.subs
        else:
            box[0] = -len(sys.modules)
        return 1   # the first entry says it all: stop there

    callback = _CALLBACK(first)
    iterate.argtypes = [_CALLBACK, ctypes.c_void_p]

    def count() -> int:
        iterate(callback, None)
        return box[0]
    return count


class ThreadPools:
    """The runner's view of the native thread pools loaded in its process."""

    def __init__(self) -> None:
        self._controller: Any = None
        self._count = _library_counter()
        self._seen: int | None = None

    def fit(self, n: int) -> None:
        """Make every loaded pool have exactly ``n`` threads."""
        now = self._count()
        if now != self._seen:
            from threadpoolctl import ThreadpoolController
            self._controller = ThreadpoolController()
            self._seen = self._count()   # threadpoolctl's own import may load libraries
        controller = self._controller
        if controller.lib_controllers and any(
                lib.num_threads != n for lib in controller.lib_controllers):
            controller.limit(limits=n)
