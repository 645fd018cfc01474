"""Registries keyed by name, so adding a codec/corpus/labeller/analysis is adding one file."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from .errors import SpecError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> factory. ``package`` is imported lazily so every module in it registers."""

    def __init__(self, what: str, package: str | None = None):
        self.what = what
        self.package = package
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.what} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded or self.package is None:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")

    def get(self, name: str) -> T:
        if name in self._items:  # already registered: importing every other module would only cost time
            return self._items[name]
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise SpecError(
                f"unknown {self.what} '{name}'; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
