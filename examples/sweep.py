"""A parameter sweep: subtasks (in the client) fan jobs out and reduce their results.

This is the shape of most original grain programs: ``main`` starts one subtask per
parameter set, each subtask submits many jobs and combines them; results come back in
submission order at every level.
"""

import math

import grain
from grain.resource import Cores, Memory


def energy(temperature, seed):
    # stand-in for a simulation: a deterministic, cheap computation
    x = seed * 2654435761 % 2**32 / 2**32
    return math.exp(-1.0 / temperature) * (1 + 0.01 * x)


async def sweep(temperature, samples):
    async with grain.open_waitgroup() as wg:
        for seed in range(samples):
            wg.submit(Cores(1) & Memory(0.1), energy, temperature, seed)
    return temperature, sum(wg.results) / samples


async def main():
    async with grain.open_waitgroup() as wg:
        for t in (0.5, 1.0, 2.0, 4.0):
            wg.start_subtask(sweep, t, 25)
    for t, mean in wg.results:
        print(f"T={t:<4} <E>={mean:.6f}")
    return wg.results


if __name__ == "__main__":
    grain.run_combine(main)
