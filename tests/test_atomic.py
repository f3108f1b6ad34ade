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
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    import numpy as np
    import pytest

    path = atomic.write_file(tmp_path / "a.npz", lambda tmp: np.savez(tmp, x=np.arange(3)), suffix=".npz")
    assert np.load(path)["x"].tolist() == [0, 1, 2]

    def broken(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(path, broken)
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]
