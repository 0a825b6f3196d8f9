"""What the client ships of a project (grain/client/project.py): the modules and packages
beside the script that are not installed, never hidden files, caches, virtual
environments or installed names; a deterministic zip; where the project is for
``python main.py`` and ``python -m``."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from runner_cluster import RunScript, last_json, script_env

from grain.client.project import ProjectTooLarge, build_bundle, project_files


def _tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)


def _names(root: Path, script: Path | None = None) -> list[str]:
    return [p.relative_to(root).as_posix() for p in project_files(root, script)]


def test_what_is_shipped_and_what_is_not(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "main.py": "print('the script')",
        "mysim.py": "X = 1",
        "helpers.py": "Y = 2",
        "notes.txt": "not a module",
        "data.csv": "1,2",
        "mylib/__init__.py": "",
        "mylib/core.py": "",
        "mylib/table.json": "{}",              # package data goes with a regular package
        "mylib/__pycache__/core.cpython-311.pyc": b"\0",
        "mylib/.secret": "hidden",
        "mylib/sub/__init__.py": "",
        "tools/run_me.py": "",                 # a namespace package: Python files only
        "tools/big.bin": b"\0" * 100,
        "results/out.csv": "no python here",  # not a package at all
        ".venv/pyvenv.cfg": "home = /usr",
        ".venv/lib/site.py": "",
        "env/pyvenv.cfg": "home = /usr",       # a venv without a dot
        "env/thing.py": "",
        ".git/config": "",
        ".hidden.py": "",
        "site-packages/foo.py": "",
        "my.egg-info/PKG-INFO": "",
        "grain/__init__.py": "",               # never shadow the workers' own Grain
        "trio.py": "",                         # installed elsewhere: the workers have it
        "not-a-module.py": "",
    })
    assert _names(tmp_path, tmp_path / "main.py") == [
        "helpers.py", "mylib/__init__.py", "mylib/core.py", "mylib/sub/__init__.py",
        "mylib/table.json", "mysim.py", "tools/run_me.py"]


def test_the_zip_is_deterministic_and_follows_the_content(tmp_path: Path) -> None:
    _tree(tmp_path, {"a.py": "A = 1", "pkg/__init__.py": "", "pkg/b.py": "B = 2"})
    first = build_bundle(tmp_path)
    os.utime(tmp_path / "a.py", (1, 1))                 # times do not matter
    (tmp_path / "pkg" / "b.py").chmod(0o600)            # nor modes
    second = build_bundle(tmp_path)
    assert first is not None and second is not None and first == second
    (tmp_path / "a.py").write_text("A = 2")
    third = build_bundle(tmp_path)
    assert third is not None and third[0] != first[0]
    with zipfile.ZipFile(io.BytesIO(third[1])) as zf:
        assert zf.namelist() == ["a.py", "pkg/__init__.py", "pkg/b.py"]
        assert zf.read("a.py") == b"A = 2"
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_nothing_to_ship_and_limits(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("")
    assert build_bundle(tmp_path, tmp_path / "main.py") is None
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "blob.bin").write_bytes(os.urandom(200_000))
    with pytest.raises(ProjectTooLarge, match="ship_project=False") as info:
        build_bundle(tmp_path, limit=100_000)
    assert "GRAIN_SHIP_PROJECT=0" in str(info.value)


ROOT_PROBE = """
    import json, sys
    from grain.client.project import project_root
    print(json.dumps(str(project_root())))
"""


def test_the_project_is_the_scripts_directory(run_script: RunScript, tmp_path: Path) -> None:
    # run from elsewhere: the project is where the script is, not the working directory
    (tmp_path / "elsewhere").mkdir()
    proc = run_script(ROOT_PROBE, cwd=tmp_path / "elsewhere")
    assert last_json(proc) == str((tmp_path / "project").resolve())


def test_python_dash_m_ships_from_where_it_was_run(run_script: RunScript,
                                                   tmp_path: Path) -> None:
    import subprocess
    import sys

    run_script("", files={"app/__init__.py": "", "app/probe.py": ROOT_PROBE})
    out = subprocess.run([sys.executable, "-m", "app.probe"], capture_output=True, text=True,
                         cwd=tmp_path / "project", env=script_env(), timeout=60)
    assert last_json(out) == str((tmp_path / "project").resolve())
    probe = subprocess.run(
        [sys.executable, "-c", "from grain.client.project import project_root; "
         "print(project_root())"], capture_output=True, text=True, cwd=tmp_path,
        env=script_env(), timeout=60)
    assert probe.stdout.strip() == "None"          # python -c: no script, nothing shipped
