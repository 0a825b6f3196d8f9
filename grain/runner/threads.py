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

The check costs about a microsecond per job; listing the loaded libraries costs about a
millisecond, so it is redone only when the job's unpickling imported a module (libraries
are loaded by imports; a library loaded by other means, ``ctypes.CDLL`` for example, is
found at the next import).
"""

from __future__ import annotations

import sys
from typing import Any


class ThreadPools:
    """The runner's view of the native thread pools loaded in its process."""

    def __init__(self) -> None:
        self._controller: Any = None
        self._modules = -1

    def fit(self, n: int) -> None:
        """Make every known pool have exactly ``n`` threads."""
        if len(sys.modules) != self._modules:
            from threadpoolctl import ThreadpoolController
            self._controller = ThreadpoolController()
            self._modules = len(sys.modules)
        controller = self._controller
        if controller.lib_controllers and any(
                lib.num_threads != n for lib in controller.lib_controllers):
            controller.limit(limits=n)
