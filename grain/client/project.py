"""Shipping the user's own modules to remote workers (``from mysim import simulate``).

A program's functions defined in ``__main__`` travel by value, but functions and classes
of a module beside the script (``mysim.py``, a package ``mylib/``) travel by reference:
a worker must be able to import them. So, for a session on a remote cluster, the client
zips the modules of the script's project, the executor hands the zip to each worker
before the session's first job there, and runners put it first on ``sys.path``.

What is shipped, from the project directory (the script's directory; for ``python -m
pkg.mod``, the directory it was run from):

- top-level modules (``*.py`` and compiled extensions) other than the script itself;
- packages: a directory with ``__init__.py`` (every file in it: package data too), or a
  namespace package (a directory whose name is an identifier holding ``.py`` files: its
  Python files only);
- never: hidden files and directories, ``__pycache__``, virtual environments
  (``pyvenv.cfg``), ``site-packages``/``dist-packages``/``node_modules``, ``*.egg-info``,
  the ``grain`` package itself, nor a name that is installed elsewhere (found on
  ``sys.path`` outside the project: the workers have their own copy).

Nothing is shipped when the program has no script (``python -c``, a notebook) or its
script lives inside an installation (a console script, site-packages). The zip is
deterministic (sorted names, fixed times and modes), so its SHA-256 digest is stable and
workers unpack a project once. It may hold ``config.PROJECT_BUNDLE_LIMIT`` bytes; past
that, or past ``MAX_FILES`` files, the session fails at once saying how to opt out:
``run_combine(..., ship_project=False)`` or ``GRAIN_SHIP_PROJECT=0``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import io
import os
import site
import sys
import zipfile
from pathlib import Path

from .. import config
from ..errors import ConfigurationError

MAX_FILES = 10_000
"""Files a bundle may hold (the worker refuses more)."""
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "node_modules", "grain"}
_MODULE_SUFFIXES = tuple(importlib.machinery.SOURCE_SUFFIXES
                         + importlib.machinery.EXTENSION_SUFFIXES)
_EPOCH = (1980, 1, 1, 0, 0, 0)

Bundle = tuple[str, bytes]
"""``(sha256 hex digest, zip bytes)``, as ``Session(bundle=...)`` takes it."""


class ProjectTooLarge(ConfigurationError):
    """The project's modules are over the bundle's limits."""


def _opt_out(root: Path) -> str:
    return (f"Keep data files out of the package directories under {root}, or turn "
            f"shipping off with run_combine(..., ship_project=False) or GRAIN_SHIP_PROJECT=0 "
            f"and make your modules importable on the workers yourself.")


def _installation_dirs() -> list[Path]:
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:    # some embedded interpreters lack it
        pass
    user = site.getusersitepackages()
    if isinstance(user, str):
        dirs.add(user)
    return [Path(d).resolve() for d in dirs if d]


def _inside_installation(path: Path) -> bool:
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return True
    return any(path == d or path.is_relative_to(d) for d in _installation_dirs())


def project_root() -> Path | None:
    """The directory whose modules this program's jobs may import by name, or ``None``
    when there is nothing of the user's to ship."""
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    if not file:
        return None
    script = Path(file).resolve()
    if getattr(main, "__spec__", None) is None:
        root = script.parent                      # python my_sweep.py
    else:                                         # python -m pkg.mod, from the project
        base = Path(sys.path[0] or os.getcwd()).resolve() if sys.path else Path.cwd()
        if not script.is_relative_to(base):
            return None
        root = base
    if _inside_installation(root):
        return None
    return root


def _installed_elsewhere(name: str, root: Path) -> bool:
    """Whether ``import name`` finds something outside the project (the standard library,
    an installed distribution): the workers import their own, never the project's copy."""
    if name in sys.builtin_module_names:
        return True
    others = [p for p in sys.path if p and Path(p).resolve() != root]
    try:
        spec = importlib.machinery.PathFinder.find_spec(name, others)
    except (ImportError, ValueError, OSError):
        return False
    if spec is None:
        return False
    where = spec.origin if spec.origin not in (None, "namespace") else \
        next(iter(spec.submodule_search_locations or []), None)
    return where is None or not Path(where).resolve().is_relative_to(root)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _skip_dir(d: Path) -> bool:
    return (_hidden(d.name) or d.name in _SKIP_DIRS or d.name.endswith(".egg-info")
            or (d / "pyvenv.cfg").exists())


def _package_files(pkg: Path, python_only: bool) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(pkg):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _skip_dir(here / d))
        for f in filenames:
            if _hidden(f) or f.endswith((".pyc", ".pyo")):
                continue
            if python_only and not f.endswith(_MODULE_SUFFIXES):
                continue
            out.append(here / f)
    return out


def project_files(root: Path, script: Path | None = None) -> list[Path]:
    """The files to ship from ``root`` (see the module docstring), sorted."""
    files: list[Path] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        name = entry.name
        if _hidden(name) or (script is not None and entry == script):
            continue
        if entry.is_file():
            if not name.endswith(_MODULE_SUFFIXES):
                continue
            mod = name.split(".", 1)[0]
            if mod.isidentifier() and not _installed_elsewhere(mod, root):
                files.append(entry)
        elif entry.is_dir() and name.isidentifier() and not _skip_dir(entry):
            regular = (entry / "__init__.py").is_file()
            if not regular and not any(p.suffix == ".py" for p in entry.iterdir()):
                continue
            if _installed_elsewhere(name, root):
                continue
            files.extend(_package_files(entry, python_only=not regular))
        if len(files) > MAX_FILES:
            raise ProjectTooLarge(f"the project at {root} has over {MAX_FILES} files in its "
                                  f"modules and packages to ship to the workers. "
                                  + _opt_out(root))
    return sorted(files)


def build_bundle(root: Path, script: Path | None = None,
                 limit: int = config.PROJECT_BUNDLE_LIMIT) -> Bundle | None:
    """A deterministic zip of the project's modules and its digest; ``None`` when there
    is nothing to ship. Raises ``ProjectTooLarge`` past the limits."""
    files = project_files(root, script)
    if not files:
        return None
    raw = 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in files:
            data = path.read_bytes()
            raw += len(data)
            if raw > 4 * limit:          # the worker refuses to unpack more
                raise ProjectTooLarge(f"the project at {root} has over {4 * limit} bytes "
                                      f"of modules to ship to the workers. " + _opt_out(root))
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    blob = buf.getvalue()
    if len(blob) > limit:
        raise ProjectTooLarge(f"the project at {root} zips to {len(blob)} bytes of modules "
                              f"to ship to the workers, over the limit of {limit} bytes "
                              f"(config.PROJECT_BUNDLE_LIMIT). " + _opt_out(root))
    return hashlib.sha256(blob).hexdigest(), blob


def ship_enabled(option: bool | None) -> bool:
    """``run_combine(ship_project=...)``, else ``GRAIN_SHIP_PROJECT`` (default on)."""
    if option is not None:
        return bool(option)
    return config.env_flag(config.ENV_SHIP_PROJECT, True)


def program_bundle() -> Bundle | None:
    """The bundle of this program's project (``None``: nothing to ship)."""
    root = project_root()
    if root is None:
        return None
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    return build_bundle(root, Path(file).resolve() if file else None)
