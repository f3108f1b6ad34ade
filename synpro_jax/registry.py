"""Named plug-ins (advantage estimators, policy losses, rewards): one small registry type for all of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered by name; a second, different object under a taken name is refused."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(f"no {self.kind} {name!r}; registered: {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)
