"""Registry of feature extractors: ``get_extractor(name, **opts)`` and ``list_extractors()``.

Each family module registers its constructors with :func:`register`. Modules that
need heavy dependencies (Keras) are imported only when one of their names is asked
for, so ``featx index`` and the classical extractors start fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .base import Extractor

__all__ = ["Extractor", "ExtractorInfo", "get_extractor", "list_extractors", "register", "parse_opts"]


@dataclass
class ExtractorInfo:
    """What the registry knows about a name without building the model."""

    name: str
    factory: Callable[..., Extractor]
    description: str = ""
    default_opts: dict = field(default_factory=dict)
    # Callable returning (available: bool, detail: str) about offline weights.
    weights_status: Callable[[], tuple[bool, str]] | None = None
    output_dim: int | None = None


_REGISTRY: dict[str, ExtractorInfo] = {}

# Module that registers each name (imported lazily). ``keras:<app>`` is handled
# by featx.extractors.keras_apps.
_FAMILIES = {
    "hog": "featx.extractors.classical",
    "sift_bovw": "featx.extractors.classical",
    "vgg16": "featx.extractors.vgg16",
    "caffenet": "featx.extractors.caffenet",
    "efficientnet_lite0": "featx.extractors.efficientnet_lite",
    "efficientnet_lite1": "featx.extractors.efficientnet_lite",
    "efficientnet_lite2": "featx.extractors.efficientnet_lite",
}


def register(info: ExtractorInfo) -> ExtractorInfo:
    """Add (or replace) a name in the registry."""
    _REGISTRY[info.name] = info
    return info


def _load_family(name: str) -> None:
    module = "featx.extractors.keras_apps" if name.startswith("keras:") else _FAMILIES.get(name)
    if module is not None:
        importlib.import_module(module)


def get_extractor(name: str, **opts: Any) -> Extractor:
    """Build the extractor registered under ``name`` with options ``opts``.

    Examples
    --------
    >>> from featx.extractors import get_extractor
    >>> get_extractor("hog", size=64).output_dim > 0
    True
    """
    if name not in _REGISTRY:
        _load_family(name)
    if name.startswith("keras:") and name not in _REGISTRY:
        from .keras_apps import register_application

        register_application(name)
    info = _REGISTRY.get(name)
    if info is None:
        known = ", ".join(sorted(set(_FAMILIES) | {"keras:<application>"}))
        raise ValueError(f"unknown extractor {name!r}; expected one of: {known}")
    try:
        return info.factory(**opts)
    except TypeError as exc:
        # A keyword the factory does not take: the user's --opt, not a bug. Name the valid ones.
        if "unexpected keyword argument" not in str(exc):
            raise
        import inspect

        from featx.extractors.base import unknown_options_error

        valid = [p for p in inspect.signature(info.factory).parameters
                 if p not in ("self", "application") and not p.startswith("_")
                 and inspect.signature(info.factory).parameters[p].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                                               inspect.Parameter.VAR_POSITIONAL)]
        unknown = [key for key in opts if key not in valid]
        raise unknown_options_error(name, unknown or list(opts), valid) from None


def list_extractors(load_all: bool = True) -> list[ExtractorInfo]:
    """Every registered extractor (importing each family when ``load_all``)."""
    if load_all:
        for name in _FAMILIES:
            try:
                _load_family(name)
            except ImportError:  # a family whose optional dependency is missing
                continue
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def parse_opts(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``["k=500", "pool=avg", "dense=true"]`` into typed keyword arguments.

    Values are parsed as int, float, bool (true/false), ``none`` or a string.
    """
    opts: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"option {pair!r} is not KEY=VALUE (example: --opt k=500)")
        opts[key.strip().replace("-", "_")] = _parse_value(raw.strip())
    return opts


def _parse_value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
