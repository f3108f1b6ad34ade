"""One rule for refusing to resume with other settings: a job records the fields that decide its results beside its
progress (a checkpoint's metadata, a shard's sidecar, a score part's fingerprint), and a restart whose fields
differ is refused before anything is overwritten, naming every field that differs with its old and new value.

Fields are JSON-like (dicts of dicts, lists, strings, numbers); a nested dict is compared field by field, so the
message says ``model.d_model: 64 then, 128 now`` rather than "the model changed".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import json
from typing import Any

from synpro_jax.errors import ConfigError

__all__ = ["jsonable", "differences", "describe", "check", "resume_guard"]

_ABSENT = object()


def jsonable(fields: Any) -> Any:
    """``fields`` as they read back from JSON (tuples become lists, dataclass values their strings), so a recorded
    copy and a fresh one compare equal when they describe the same settings."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def differences(old: Any, new: Any, name: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) of every difference, looking inside dicts; a field present on one
    side only has ``None`` on the other."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for field in sorted(set(old) | set(new), key=str):
            sub = f"{name}.{field}" if name else str(field)
            out += differences(old.get(field, _ABSENT), new.get(field, _ABSENT), sub)
        return out
    if old == new:
        return []
    return [(name or "(the whole record)", None if old is _ABSENT else old, None if new is _ABSENT else new)]


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(diffs: list[tuple[str, Any, Any]]) -> str:
    """``field: old then, new now`` for each difference, joined with "; "."""
    return "; ".join(f"{field}: {_short(then)} then, {_short(now)} now" for field, then, now in diffs)


def check(old: Any, new: Any, where: str, remedy: str = "use a new out_dir to run with these settings") -> None:
    """Refuse (ValueError) unless ``old`` and ``new`` agree on every field; the message names ``where``, every
    differing field and the ``remedy``."""
    diffs = differences(jsonable(old), jsonable(new))
    if diffs:
        raise ConfigError(f"{where} was made with other settings ({describe(diffs)}); {remedy}")


def resume_guard(
    fields: Mapping[str, Any],
    where: str,
    *,
    key: str = "settings",
    remedy: str | None = None,
    legacy: Callable[[dict], bool] | None = None,
) -> Callable[[dict], None]:
    """A ``check_meta`` for :meth:`Checkpointer.restore`: the checkpoint's ``meta[key]`` must equal ``fields``.
    A checkpoint without them (written before they were recorded) is accepted only if ``legacy(meta)`` says it
    fits (say, an older digest of the same fields matches), and refused otherwise."""
    expected = jsonable(dict(fields))

    def guard(meta: dict) -> None:
        recorded = meta.get(key)
        if recorded is None and legacy is not None and legacy(meta):
            return
        if recorded is None:
            raise ConfigError(
                f"{where} holds a checkpoint that does not record its settings (written by an older synpro_jax); "
                f"{remedy or 'use a new out_dir'}"
            )
        check(recorded, expected, where, remedy or "use a new out_dir to run with these settings")

    return guard
