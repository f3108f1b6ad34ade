"""Validation shared by the config dataclasses: errors name the class and the knob."""

from __future__ import annotations


def positive_ints(obj, *knobs: str) -> None:
    for knob in knobs:
        value = getattr(obj, knob)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(obj).__name__}.{knob}={value!r}: must be a positive integer")
