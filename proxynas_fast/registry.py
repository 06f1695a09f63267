"""One registry pattern for everything looked up by name (selectors, search strategies, data sets, backends,
scorer networks, genotypes).

    SELECTORS = Registry("selection method")

    @SELECTORS.register("p1")
    def select_p1(...): ...

    SELECTORS.get("P1")        # case-insensitive; an unknown name raises a one-line error listing the known ones
    SELECTORS.names()          # registration order, as spelled when registered; `list_selectors()` etc. wrap it
    "p1" in SELECTORS
    SELECTORS.unregister("p1") # e.g. a plugin or a test removing what it added

The registry stores the registered object itself (a function, a class or an instance), never a string that
names it. Registering a name twice is an error (two modules claiming one name is a bug, not an override).
This module imports nothing heavy: registries are read by `--help` before torch is loaded.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, List, Optional, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects by lower-case name. `kind` names what is registered, for error messages ("data set")."""

    def __init__(self, kind: str, error: Type[Exception] = ValueError):
        self.kind = kind
        self.error = error
        self._items: Dict[str, T] = {}   # by lower-case name
        self._spelling: Dict[str, str] = {}  # lower-case name -> the name as registered

    def register(self, name: Optional[str] = None, *, obj: Optional[T] = None):
        """Decorator (`@reg.register("name")`, or `@reg.register()` to use the object's `name` attribute or
        `__name__`), or a direct call with `obj=`. Returns the object unchanged."""

        def add(item: T) -> T:
            key = (name if name is not None else getattr(item, "name", None) or getattr(item, "__name__", ""))
            spelling = str(key)
            key = spelling.lower()
            if not key:
                raise ValueError(f"{self.kind}: cannot register {item!r} without a name")
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = item
            self._spelling[key] = spelling
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        key = str(name).lower()
        try:
            return self._items[key]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}") from None

    def unregister(self, name: str) -> T:
        """Remove `name` (case-insensitive) and return what was registered under it."""
        key = str(name).lower()
        if key not in self._items:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        del self._spelling[key]
        return self._items.pop(key)

    def names(self) -> List[str]:
        return list(self._spelling.values())

    def items(self):
        return [(self._spelling[key], item) for key, item in self._items.items()]

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def first_line(obj: Callable) -> str:
    """The first line of an object's docstring (the description a `--list-*` flag prints)."""
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""
