"""Selectors by name: `@register_selector("name", options={...})` on a selector function.

    @register_selector("every_other", options={"step": "take every step-th example (default 2)"})
    def select_every_other(entropy, count, rng, *, bin_width=None, step=2):
        "Every step-th example."  # the docstring's first line is the --list-methods description
        return np.arange(0, step * count, step)

A selector is called as `fn(entropy, count, rng, *, bin_width, **options)` and returns `count` distinct
positions into `entropy`. `entropy` is the validated float64 array of the examples under consideration (the
whole set, or one class when class balancing), `rng` a seeded numpy Generator, `bin_width` the resolved log10
bin width (None when neither bin_width nor dataset was given and the method needs none).

The specs live in `SELECTORS`, a `proxynas_fast.registry.Registry` like the search strategies and data sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

from ..registry import Registry, first_line

SELECTORS: Registry["SelectorSpec"] = Registry("selection method")


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
    """Decorator adding a selector under `name`; `options` documents each method-specific keyword. Returns
    the function unchanged; a name registered twice raises ValueError."""
    key = name.lower()

    def decorate(fn: Callable) -> Callable:
        spec = SelectorSpec(key, fn, first_line(fn), dict(options or {}), tuple(per_example_options),
                            tuple(required_options), needs_bin_width)
        SELECTORS.register(key, obj=spec)
        return fn

    return decorate


def list_selectors() -> list[str]:
    """The selector names, sorted."""
    return sorted(SELECTORS.names())


def get_selector(name: str) -> SelectorSpec:
    """The spec registered under `name` (any case); an unknown name raises a ValueError naming the known ones."""
    return SELECTORS.get(name)


def describe_selectors() -> str:
    """One paragraph per selector: its description and options (used by the CLI's --list-methods)."""
    lines = []
    for key in list_selectors():
        spec = SELECTORS.get(key)
        lines.append(f"{key}: {spec.description}")
        for opt, text in spec.options.items():
            lines.append(f"    {opt}: {text}")
    return "\n".join(lines)
