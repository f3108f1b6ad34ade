"""Shared by the benchmarks: write a JSON report atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_report(report: dict, out: str | os.PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return out
