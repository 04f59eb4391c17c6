"""A tiny name -> factory registry, one per extension point (datasets, teachers, methods, backbones).

A name may be declared before its module is imported (`declare`): the registry imports that module on the first
lookup. So a process imports only the code it uses, and dvc.yaml can list a stage's own modules as its code
dependencies (editing one method leaves the other methods' stages current)."""

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
        self._declared: dict[str, tuple[str, dict[str, Any]]] = {}  # name -> (module, facts known before import)

    def declare(self, name: str, module: str, **facts: Any) -> None:
        """Name `name` as registered by `module`, imported on first lookup. `facts` are attributes the registered
        object will carry, readable without importing it (`fact`); registration checks that they agree."""
        if name in self._items or name in self._declared:
            raise KeyError(f"{self.kind} '{name}' is already registered")
        self._declared[name] = (module, facts)

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            if key in self._items:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            if key in self._declared:
                module, facts = self._declared[key]
                if getattr(obj, "__module__", module) != module:
                    raise KeyError(f"{self.kind} '{key}' is declared in {module}, not {obj.__module__}")
                wrong = {k: getattr(obj, k, None) for k, v in facts.items() if getattr(obj, k, None) != v}
                if wrong:
                    raise ValueError(f"{self.kind} '{key}': {wrong} disagree with its declaration {facts}")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items and name in self._declared:
            module = self._declared[name][0]
            importlib.import_module(module)
            if name not in self._items:
                raise KeyError(f"{self.kind} '{name}': module {module} did not register it")
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names()) or '(none)'}")
        return self._items[name]

    def module(self, name: str) -> str:
        """The module that registers `name`, without importing it."""
        if name in self._declared:
            return self._declared[name][0]
        return getattr(self.get(name), "__module__")

    def fact(self, name: str, attribute: str, default: Any = None) -> Any:
        """An attribute of a registered object, from its declaration when its module is not imported yet."""
        if name not in self._items and attribute in self._declared.get(name, ("", {}))[1]:
            return self._declared[name][1][attribute]
        return getattr(self.get(name), attribute, default)

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._declared))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._declared

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
