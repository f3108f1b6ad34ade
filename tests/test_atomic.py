"""Atomic writes: the whole new file or the old one, with the permissions a plain open() would give."""

import os

from synpro_jax import atomic


def test_an_atomic_write_replaces_the_file_whole_with_default_permissions(tmp_path):
    path = atomic.write_json(tmp_path / "sub" / "out.json", {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}'
    atomic.write_text(path, "second")
    assert path.read_text() == "second"
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]  # no temp file left
