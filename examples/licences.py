"""A custom resource: a pool of software licences, alongside cores.

``Licences`` implements Grain's ``Resource`` interface (request/alloc/dealloc). The local
worker offers 2 licences (``rpw``), so at most two licensed jobs run at once, whatever the
cores. The executor evaluates the kind by class (it is imported where the executor runs:
in the embedded cluster that is this program; a remote executor needs
``--resource-module`` naming a module that defines it).
"""

import time

import grain
from grain.resource import Cores, Resource


class Licences(Resource):
    def __init__(self, n):
        super().__init__()
        self.n = n      # available (or requested)
        self.total = n

    def _request(self, res):
        return self.n >= res.n

    def _alloc(self, res):
        if not self._request(res):
            raise ValueError(f"{self} cannot allocate {res.n} licence(s)")
        self.n -= res.n
        return Licences(res.n)

    def _dealloc(self, res):
        self.n += res.n

    def _repr(self):
        return f"Licences({self.n})"

    def _stat(self):
        return self.n, self.total


def licensed_solver(i):
    start = time.time()
    time.sleep(0.3)
    return i, repr(grain.GVAR.res), start, time.time()


async def main():
    async with grain.open_waitgroup() as wg:
        for i in range(4):
            wg.submit(Cores(1) & Licences(1), licensed_solver, i)
    for i, res, _, _ in wg.results:
        print(f"job {i}: {res}")
    # never more than 2 at once: sweep over start (+1) and end (-1) events
    events = sorted([(s, 1) for _, _, s, _ in wg.results] + [(e, -1) for _, _, _, e in wg.results])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    print(f"peak concurrent licensed jobs: {peak}")
    return wg.results


if __name__ == "__main__":
    grain.run_combine(main, rpw=Cores(4) & Licences(2))
