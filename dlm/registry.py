"""A tiny name -> object registry that lists the valid names when a name is wrong."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from dlm.errors import DlmError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes, functions, presets) for one concept, e.g. ``SCHEDULES``."""

    def __init__(self, concept: str):
        self.concept = concept
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.concept} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise DlmError(f"unknown {self.concept} {name!r}; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
