"""The ways into Grain: ``run_combine``'s arguments checked at once (the original
positional form kept), ``await grain.combine(...)`` inside a running trio program, and the
client modules' layering (no import cycle, the runner free of the client)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import trio

import grain
from grain.resource import Cores, Node


def square(x: int) -> int:
    return x * x


async def main() -> int:
    return int(await grain.exec1(Cores(1), square, 6))


@pytest.mark.parametrize("bad", ["abc", True, 3, b"host:1", Node(1, 1)])
def test_a_misread_second_argument_is_a_type_error_saying_how_to_pass_arguments(
        bad: Any) -> None:
    with pytest.raises(TypeError, match="functools.partial") as info:
        grain.run_combine(main, bad)
    assert "waddrs" in str(info.value)


def test_other_misreadings_are_type_errors_too() -> None:
    with pytest.raises(TypeError, match="functools.partial"):
        grain.run_combine(main, [], "Node(1, 1)")          # type: ignore[arg-type]
    with pytest.raises(TypeError, match="host:port"):
        grain.run_combine(main, [42])                      # type: ignore[list-item]
    with pytest.raises(TypeError, match="not its call"):
        grain.run_combine(main())                          # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not an async function"):
        grain.run_combine([main, "main"])                  # type: ignore[list-item]
    with pytest.raises(TypeError, match="async function to run"):
        grain.run_combine(42)                              # type: ignore[arg-type]


def test_the_original_positional_form_still_runs() -> None:
    assert grain.run_combine(main, [], Node(1, 1)) == 36
    assert grain.run_combine(main, (), None, temporary_err=(OSError,)) == 36


def test_combine_inside_a_running_trio_program() -> None:
    async def program() -> tuple[int, list[int], bool]:
        beats: list[float] = []
        async with trio.open_nursery() as n:
            async def heartbeat() -> None:
                while True:
                    beats.append(trio.current_time())
                    await trio.sleep(0.01)
            n.start_soon(heartbeat)

            async def sweep() -> list[int]:
                async with grain.open_waitgroup() as wg:
                    wg.map(Cores(1), square, range(5))
                return wg.results
            one = await grain.combine(main, rpw=Node(1, 1), progress=False)
            many = await grain.combine(sweep, rpw=Node(1, 1), progress=False)
            n.cancel_scope.cancel()
        return one, many, len(beats) > 1
    assert trio.run(program) == (36, [0, 1, 4, 9, 16], True)


def test_combine_checks_its_arguments_too() -> None:
    async def program() -> None:
        await grain.combine(main, "node:1")
    with pytest.raises(TypeError, match="waddrs"):
        trio.run(program)


def _imports(path: Path, package: str) -> set[str]:
    """Modules ``path`` imports (anywhere in it, functions included), absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_the_client_modules_import_no_cycle() -> None:
    client = Path(grain.__file__).parent / "client"
    graph = {f"grain.client.{p.stem}": {m for m in _imports(p, "grain.client")
                                         if m.startswith("grain.client.")}
             for p in client.glob("*.py") if p.stem != "__init__"}
    graph = {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}
    assert "grain.client.api" not in graph["grain.client.waitgroup"]

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph[node]:
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None
    for mod in graph:
        assert cycle_from(mod, mod, (mod,)) is None, f"import cycle: {cycle_from(mod, mod, (mod,))}"


def test_the_runner_imports_nothing_of_the_client() -> None:
    runner = Path(grain.__file__).parent / "runner"
    for p in runner.glob("*.py"):
        client = {m for m in _imports(p, "grain.runner") if m.startswith("grain.client")}
        assert not client, f"{p.name} imports {client}"
