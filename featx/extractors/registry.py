"""The table of extractor names: what :func:`featx.extractors.get_extractor` looks names up in.

Family modules (``classical``, ``vgg16``, ``caffenet``, ``efficientnet_lite``, ``keras_apps``)
import this module and :func:`register` their names when they are imported; this module
imports none of them, so the families depend on the registry and never the reverse.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from .base import Extractor

__all__ = ["ExtractorInfo", "register", "register_backbone", "options_of"]


@dataclass
class ExtractorInfo:
    """What the registry knows about a name without building the model.

    ``options`` are the keyword arguments ``factory`` takes (from its signature when not
    given; None for a factory taking ``**kwargs``, which checks them itself);
    :func:`featx.extractors.get_extractor` refuses any other, naming these.
    """

    name: str
    factory: Callable[..., Extractor]
    description: str = ""
    default_opts: dict = field(default_factory=dict)
    # Callable returning (available: bool, detail: str) about offline weights.
    weights_status: Callable[[], tuple[bool, str]] | None = None
    output_dim: int | None = None
    options: tuple[str, ...] | None = None
    # The family's BackboneConfig (CNNs), None for the classical extractors.
    config: object | None = None

    def __post_init__(self) -> None:
        if self.options is None and self.factory is not None:
            self.options = options_of(self.factory)


_REGISTRY: dict[str, ExtractorInfo] = {}


def register(info: ExtractorInfo) -> ExtractorInfo:
    """Add (or replace) a name in the registry."""
    _REGISTRY[info.name] = info
    return info


def register_backbone(config, factory: Callable[..., Extractor], weights_status: Callable[[], tuple[bool, str]],
                      **fields) -> ExtractorInfo:
    """Register a CNN family's ``factory`` under ``config.name``, described by its BackboneConfig.

    ``fields`` replace what the config gives (``default_opts``...).
    """
    described = {"name": config.name, "description": config.description, "default_opts": config.default_opts,
                 "output_dim": config.output_dim, "config": config}
    return register(ExtractorInfo(factory=factory, weights_status=weights_status, **{**described, **fields}))


def options_of(factory: Callable) -> tuple[str, ...] | None:
    """Keyword arguments a callable (or a class's ``__init__``) takes by name.

    None when it takes ``**kwargs``: such a factory checks its options itself.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    parameters = inspect.signature(target).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return tuple(p.name for p in parameters
                 if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
