"""Grain: resource-aware parallel jobs on trio, each pinned to exactly its cores.

Public API (compatible with the original ``grain-scheduler``)::

    import grain
    from grain.resource import Cores, Memory, Node, WTime, GPU, ZERO

    async def main():
        async with grain.open_waitgroup() as wg:
            wg.submit(Cores(2) & Memory(4), simulate, 7)
        print(wg.results)

    grain.run_combine(main)

Inside a program that already runs trio: ``await grain.combine(main)``. The user's
reference is docs/api.md.
"""

from ._version import __version__
from .client.api import combine, run_combine
from .client.gvar import GVAR
from .client.waitgroup import WaitGroup, exec1, load_cache_or_exec1, open_waitgroup
from .resource import GPU, ZERO, Cores, Memory, Node, Resource, WTime, res2link0

__all__ = [
    "GPU", "GVAR", "ZERO", "Cores", "Memory", "Node", "Resource", "WTime", "WaitGroup",
    "__version__", "combine", "exec1", "load_cache_or_exec1", "open_waitgroup",
    "res2link0", "run_combine",
]
