"""The sessions' project code on a worker: zips of the user's modules, unpacked once per
content (by SHA-256) into a private cache directory, for runners to import from.

A client ships the modules of its project (the ones beside its script that are not
installed), so that ``from mysim import simulate`` works on a remote worker as it does at
home. The zip is checked before anything is written: its digest must match, every member
must be a relative path inside the target directory (no ``..``, no absolute paths, no
links), and the total unpacked size is bounded.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile

from .. import config

MAX_MEMBERS = 10_000


def cache_root() -> str:
    """Where bundles are unpacked: a directory only this user can read."""
    root = os.path.join(tempfile.gettempdir(), f"grain-code-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    return root


def unpack_bundle(digest: str, data: bytes, root: str | None = None) -> str:
    """Unpack a bundle (once per digest); return the directory to put on ``sys.path``.
    ``ValueError`` for a bundle that does not match its digest or is unsafe."""
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError("the project bundle does not match its digest")
    root = root or cache_root()
    target = os.path.join(root, digest)
    if os.path.isdir(target):
        return target
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ValueError(f"the project bundle has over {MAX_MEMBERS} files")
        if sum(i.file_size for i in infos) > 4 * config.MAX_BUNDLE_BYTES:
            raise ValueError("the project bundle unpacks too large")
        for info in infos:
            name = info.filename
            if name.startswith("/") or ".." in name.split("/") or "\\" in name \
                    or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ValueError(f"unsafe path in the project bundle: {name!r}")
        tmp = tempfile.mkdtemp(dir=root, prefix=".unpack-")
        try:
            zf.extractall(tmp)
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isdir(target):
                raise
    return target
