"""Feature extractors by name: ``get_extractor(name, **opts)`` and ``list_extractors()``.

Each family module registers its constructors in :mod:`featx.extractors.registry`. Modules
that need heavy dependencies (Keras) are imported only when one of their names is asked
for, so ``featx index`` and the classical extractors start fast.

Options are checked here, before anything is built: one the extractor does not take is an
:class:`ExtractorOptionError` naming it, the extractor and the options it does take.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Extractor, ExtractorOptionError, unknown_options_error
from .registry import _REGISTRY, ExtractorInfo, register

__all__ = ["Extractor", "ExtractorInfo", "ExtractorOptionError", "get_extractor", "list_extractors",
           "register", "parse_opts"]

# Module that registers each name (imported lazily). ``keras:<app>`` is handled
# by featx.extractors.keras_apps.
_FAMILIES = {
    "hog": "featx.extractors.classical",
    "sift_bovw": "featx.extractors.classical",
    "vgg16": "featx.extractors.vgg16",
    "caffenet": "featx.extractors.caffenet",
    **{f"efficientnet_lite{index}": "featx.extractors.efficientnet_lite" for index in range(3)},
}


def _info(name: str) -> ExtractorInfo:
    if name not in _REGISTRY:
        if name.startswith("keras:"):
            from .keras_apps import register_application

            try:
                register_application(name)
            except ValueError as error:
                raise ExtractorOptionError(str(error)) from None
        elif name in _FAMILIES:
            importlib.import_module(_FAMILIES[name])
    info = _REGISTRY.get(name)
    if info is None:
        known = ", ".join(sorted(set(_FAMILIES) | {"keras:<application>"}))
        raise ExtractorOptionError(f"unknown extractor {name!r}; expected one of: {known}")
    return info


def get_extractor(name: str, **opts: Any) -> Extractor:
    """Build the extractor registered under ``name`` with options ``opts``.

    Raises
    ------
    ExtractorOptionError
        An unknown name, or an option the extractor does not take (``pooling=`` for ``pool=``).

    Examples
    --------
    >>> from featx.extractors import get_extractor
    >>> get_extractor("hog", size=64).output_dim > 0
    True
    """
    info = _info(name)
    unknown = set(opts) - set(info.options) if info.options is not None else set()
    if unknown:
        raise unknown_options_error(name, unknown, info.options)
    return info.factory(**opts)


def list_extractors(load_all: bool = True) -> list[ExtractorInfo]:
    """Every registered extractor (importing each family when ``load_all``)."""
    if load_all:
        for module in dict.fromkeys(_FAMILIES.values()):
            try:
                importlib.import_module(module)
            except ImportError:  # a family whose optional dependency is missing
                continue
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def parse_opts(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``["k=500", "pool=avg", "dense=true"]`` into typed keyword arguments.

    Values are parsed as int, float, bool (true/false), ``none`` or a string.

    Raises
    ------
    ExtractorOptionError
        For a pair that is not ``KEY=VALUE``.
    """
    opts: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ExtractorOptionError(f"option {pair!r} is not KEY=VALUE (example: --opt k=500)")
        opts[key.strip().replace("-", "_")] = _parse_value(raw.strip())
    return opts


_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False,
          "none": None, "null": None}


def _parse_value(raw: str) -> Any:
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
