"""A tiny name -> factory registry, one per extension point (datasets, teachers, methods, backbones)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; registering a name twice is an error so plugins cannot shadow each other."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            if key in self._items:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} '{name}'; known: {known}")
        return self._items[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_plugin(module: str, where: str = "") -> None:
    """Import a module that registers a teacher or method, looked up from the project root (the working directory
    Snakemake and DVC run in) as well as the installed packages; a missing module is an error naming `where`."""
    root = os.getcwd()
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise ModuleNotFoundError(f"{where or 'plugin'}: cannot import module {module!r} (not importable "
                                      f"from {root} nor installed)") from exc
        raise
