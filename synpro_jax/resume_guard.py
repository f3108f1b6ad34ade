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

__all__ = ["ABSENT", "jsonable", "differences", "describe_one", "describe", "check", "resume_guard"]

ABSENT = object()  # a field one side does not have


def jsonable(fields: Any) -> Any:
    """``fields`` as they read back from JSON (tuples become lists, dataclass values their strings), so a recorded
    copy and a fresh one compare equal when they describe the same settings."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def differences(old: Any, new: Any, name: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) of every difference, looking inside dicts and inside lists of one
    length (``field[i]``); a field present on one side only has :data:`ABSENT` on the other. The whole value,
    when it differs without fields, is named ``value``."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for field in sorted(set(old) | set(new), key=str):
            sub = f"{name}.{field}" if name else str(field)
            out += differences(old.get(field, ABSENT), new.get(field, ABSENT), sub)
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{name}[{i}]")]
    if old is not ABSENT and new is not ABSENT and old == new:
        return []
    return [(name or "value", old, new)]


def _short(value: Any) -> str:
    if value is ABSENT:
        return "absent"
    text = json.dumps(value, ensure_ascii=False, default=str)
    # long values (paths, digests) keep both ends: two paths often differ only at the end
    return text if len(text) <= 80 else text[:38] + "..." + text[-39:]


def describe_one(diff: tuple[str, Any, Any]) -> str:
    """``field: old then, new now`` (values as JSON, shortened; a missing one ``absent``)."""
    field, then, now = diff
    return f"{field}: {_short(then)} then, {_short(now)} now"


def describe(diffs: list[tuple[str, Any, Any]]) -> str:
    """Every difference as :func:`describe_one` gives it, joined with "; "."""
    return "; ".join(describe_one(d) for d in diffs)


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
