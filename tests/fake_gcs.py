"""gs:// paths served from memory, for tests of code that writes to a bucket (etils.epath would otherwise use
TensorFlow's or gcsfs's GCS client). Use the ``fake_gcs`` fixture (tests/conftest.py)."""

from fsspec.implementations.memory import MemoryFileSystem


class FakeGCS(MemoryFileSystem):  # paths as gcsfs gives them: "bucket/key", no root slash, no scheme
    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for scheme in ("gs://", "gcs://"):
            path = path[len(scheme):] if path.startswith(scheme) else path
        return path.strip("/")


def install(monkeypatch) -> None:
    """Route gs:// and gcs:// to an empty FakeGCS for one test."""
    import importlib

    from etils.epath import backend, gpath

    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is its read-only view)
    for protocol in ("gs", "gcs"):  # epath asks fsspec for "gcs"
        monkeypatch.setitem(registry._registry, protocol, FakeGCS)
    # epath caches one filesystem object per protocol and process: drop it, so this FakeGCS (and any patch a
    # test puts on it) is the one used, whichever test file ran first.
    backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
