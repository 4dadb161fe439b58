"""The registry of unlearning methods: name → function + default parameters.

Adding a method = one module here that decorates its function with :func:`register`,
plus one entry under ``methods:`` in the config. A method is called as
``fn(ctx: UnlearnContext) -> VAE`` and must never need audit cells (it cannot reach them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

from .. import ScunlearnError


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    defaults: dict
    doc: str


REGISTRY: dict[str, Method] = {}


def register(name: str, defaults: dict) -> Callable:
    """Decorator adding ``fn`` to the registry under ``name`` with its parameter defaults."""

    def deco(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"method '{name}' registered twice")
        REGISTRY[name] = Method(name, fn, defaults, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def _merge(defaults: dict, params: dict, where: str) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in params.items():
        if k not in defaults:
            raise ScunlearnError(f"{where}: unknown parameter '{k}'; known: {sorted(defaults)}")
        out[k] = _merge(defaults[k], v, f"{where}.{k}") if isinstance(defaults[k], dict) else v
    return out


def get_method(name: str) -> Method:
    """The registered method ``name``, or a clear error listing the known ones."""
    if name not in REGISTRY:
        raise ScunlearnError(f"unknown unlearning method '{name}'; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def resolve_params(name: str, params: dict | None, variant: str | None = None) -> dict:
    """The method's defaults overridden by ``params``; unknown keys are errors."""
    return _merge(get_method(name).defaults, params or {}, f"methods.{variant or name}.params")


from . import extragradient, fisher, frozen_critic  # noqa: E402,F401  (registration)
