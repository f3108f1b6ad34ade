"""Atomic file writes, on a local disk or an object store (``gs://``, through etils.epath).

Locally: a temp file in the target's folder, flushed to disk, then renamed over the target. On an object store a
single object upload is already all-or-nothing (GCS serves the old object until the new one is complete), so the
content goes straight to the target. Either way a reader, or a resumed job, sees the old file or the new one,
never a torn one.
"""

from __future__ import annotations

from collections.abc import Callable
import io
import json
import os
import shutil
import tempfile
from typing import Any

from etils import epath
import numpy as np

__all__ = [
    "write_text",
    "write_bytes",
    "write_json",
    "write_file",
    "publish_dir",
    "load_npz",
    "is_remote",
    "absolute",
    "canonical_name",
    "file_fingerprint",
]

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """True for object-store paths (gs://, s3://, ...), which have no rename and no append."""
    return "://" in os.fspath(path)


def absolute(path: PathLike) -> epath.Path:
    """``path`` made absolute. A remote path is already absolute, and etils' ``absolute()``/``resolve()`` would turn
    ``gs://b/x`` into a local ``<cwd>/gs:/b/x``."""
    path = epath.Path(path)
    return path if is_remote(path) else path.absolute()


def canonical_name(path: PathLike) -> str:
    """One name per file: resolved (symlinks followed) on a local disk, as given on an object store."""
    path = epath.Path(path)
    return str(path if is_remote(path) else path.resolve())


def file_fingerprint(path: PathLike) -> tuple[str, int, int]:
    """(canonical name, size, mtime) of a local file or an object, for cache keys."""
    st = epath.Path(path).stat()
    return canonical_name(path), int(st.length), int(st.mtime)


def _default_mode() -> int:
    """What open() would give a new file: 0o666 less the process umask (mkstemp's files are 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


def write_bytes(path: PathLike, data: bytes) -> epath.Path:
    path = epath.Path(path)
    if is_remote(path):
        path.write_bytes(data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.fspath(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: PathLike, text: str) -> epath.Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, **dump_kwargs) -> epath.Path:
    return write_text(path, json.dumps(obj, **{"indent": 2, **dump_kwargs}))


def write_file(path: PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> epath.Path:
    """``write(tmp)`` fills a local temp file (named with ``suffix``, for writers that pick a format by it, such as
    ``np.savez`` or ``savefig``), which then replaces ``path`` (uploaded, for an object store)."""
    path = epath.Path(path)
    remote = is_remote(path)
    if not remote:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=None if remote else os.fspath(path.parent), prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        if remote:
            with open(tmp, "rb") as f:
                path.write_bytes(f.read())
            return path
        os.chmod(tmp, _MODE)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.fspath(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def publish_dir(out: PathLike, fill: Callable[[epath.Path], None], last: tuple[str, ...] = ()) -> epath.Path:
    """``fill(tmp)`` writes a directory's files into a local temp folder, which then becomes ``out`` whole.

    Locally the folder is renamed into place (an old ``out`` is moved aside first and removed after), so a
    reader sees the old directory or the new one. An object store has no directory rename: the old objects are
    removed, then the files are uploaded, the names in ``last`` after all others, so a reader that checks for
    them (an HF directory's ``config.json``) never takes a half-uploaded directory for a whole one.
    """
    out = epath.Path(out)
    if is_remote(out):
        tmp = epath.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-"))
        try:
            fill(tmp)
            if out.exists():
                out.rmtree()
            local = os.fspath(tmp)
            files = [os.path.relpath(os.path.join(d, n), local) for d, _, names in os.walk(local) for n in names]
            for rel in sorted(files, key=lambda r: (os.path.basename(r) in last, r)):
                with open(os.path.join(local, rel), "rb") as fh:
                    write_bytes(out / rel, fh.read())
        finally:
            shutil.rmtree(os.fspath(tmp), ignore_errors=True)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a kill inside an earlier publish
        shutil.rmtree(os.fspath(stale), ignore_errors=True)
    tmp = epath.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=os.fspath(out.parent)))
    try:
        fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.tmp-old-{os.getpid()}")
            os.replace(os.fspath(out), os.fspath(old))
            os.replace(os.fspath(tmp), os.fspath(out))
            shutil.rmtree(os.fspath(old), ignore_errors=True)
        else:
            os.replace(os.fspath(tmp), os.fspath(out))
    finally:
        if tmp.exists():
            shutil.rmtree(os.fspath(tmp), ignore_errors=True)
    return out


def load_npz(path: PathLike):
    """``np.load`` of an .npz written by :func:`write_file` (local, or read whole from an object store); pickles
    are refused."""
    path = epath.Path(path)
    if is_remote(path):
        return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    return np.load(os.fspath(path), allow_pickle=False)
