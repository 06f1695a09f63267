"""Selector registry (timm style): `@register_selector("name", options={...})` on a selector function.

A selector is called as `fn(entropy, count, rng, *, bin_width, **options)` and returns `count` distinct
positions into `entropy`. `entropy` is the validated float64 array of the examples under consideration (the
whole set, or one class when class balancing), `rng` a seeded numpy Generator, `bin_width` the resolved log10
bin width (None when neither bin_width nor dataset was given and the method needs none).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

_SELECTORS: Dict[str, "SelectorSpec"] = {}


@dataclass(frozen=True)
class SelectorSpec:
    name: str
    fn: Callable
    description: str
    options: Dict[str, str] = field(default_factory=dict)  # option name -> what it does
    per_example_options: Tuple[str, ...] = ()  # array options indexed like entropy (sliced per class)
    required_options: Tuple[str, ...] = ()
    needs_bin_width: bool = False

    def check_options(self, options: dict) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = sorted(self.options) or "none"
            raise ValueError(f"selector {self.name!r} got unknown option(s) {unknown}; its options: {allowed} "
                             f"(plus class_balanced, round_to for every selector)")
        missing = [name for name in self.required_options if options.get(name) is None]
        if missing:
            raise ValueError(f"selector {self.name!r} needs option(s) {missing}: "
                             + "; ".join(f"{m}: {self.options[m]}" for m in missing))


def register_selector(name: str, *, options: Dict[str, str] | None = None, per_example_options=(),
                      required_options=(), needs_bin_width: bool = False):
    """Decorator adding a selector under `name`; `options` documents each method-specific keyword."""
    key = name.lower()

    def decorate(fn: Callable) -> Callable:
        if key in _SELECTORS:
            raise ValueError(f"selector {key!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _SELECTORS[key] = SelectorSpec(key, fn, doc[0] if doc else "", dict(options or {}),
                                       tuple(per_example_options), tuple(required_options), needs_bin_width)
        return fn

    return decorate


def list_selectors() -> list[str]:
    return sorted(_SELECTORS)


def get_selector(name: str) -> SelectorSpec:
    key = str(name).lower()
    if key not in _SELECTORS:
        raise ValueError(f"unknown selection method {name!r}; available: {list_selectors()}")
    return _SELECTORS[key]


def describe_selectors() -> str:
    """One paragraph per selector: its description and options (used by the CLI's --list-methods)."""
    lines = []
    for key in list_selectors():
        spec = _SELECTORS[key]
        lines.append(f"{key}: {spec.description}")
        for opt, text in spec.options.items():
            lines.append(f"    {opt}: {text}")
    return "\n".join(lines)
