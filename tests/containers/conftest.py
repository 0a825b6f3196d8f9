"""Fixtures of the container tier: the engine and the project image, once per session.

The tier runs wherever a container engine can be had (as root: a private dockerd that
scripts/container-engine.sh starts; test sessions running side by side share it, and the last
one to finish stops it if a test session started it); elsewhere every test that needs it
skips with the reason. The operator tests' KMock
harness (tests/operator/kmock_harness.py) is imported from its directory, not copied.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "operator"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from container_harness import (  # noqa: E402
    Engine,
    EngineUnavailable,
    ProjectImage,
    close_engine,
    open_engine,
    project_image,
    remove_labelled,
)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A running container engine (skips the test when none can be had here)."""
    try:
        eng = open_engine()
    except EngineUnavailable as e:
        pytest.skip(f"container tier: {e}")
    remove_labelled(eng)  # containers of sessions that were killed
    try:
        yield eng
    finally:
        remove_labelled(eng)
        close_engine(eng)


@pytest.fixture(scope="session")
def project(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> ProjectImage:
    """The project image built from a snapshot of the current sources (cached by their hash)."""
    try:
        return project_image(engine, tmp_path_factory.mktemp("image"))
    except EngineUnavailable as e:
        pytest.skip(f"container tier: {e}")


@pytest.fixture(scope="session")
def image(project: ProjectImage) -> str:
    """The project image's tag."""
    return project.tag


@pytest.fixture(scope="session")
def client_env(project: ProjectImage) -> dict[str, str]:
    """Environment for user programs on the host: the Grain of the image's snapshot."""
    return project.client_env()
