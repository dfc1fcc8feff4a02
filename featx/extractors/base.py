"""The Extractor protocol: what every feature extractor provides.

An extractor turns a batch of decoded RGB images (uint8, H×W×3, already resized
to :attr:`Extractor.preprocessing` ``size``) into a float32 matrix, one row per
image. The pipeline owns decoding (``featx.images``), batching and writing; an
extractor owns only the maths.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Sequence

import numpy as np

from featx.errors import UserError


class ExtractorOptionError(UserError, ValueError):
    """An ``--opt`` that an extractor does not take (a user's mistake: one line, exit 2)."""


# Spellings users bring from Keras/timm, and the option featx calls them.
_OPTION_ALIASES = {"pooling": "pool", "layers": "layer", "weight": "weights", "cut": "layer"}


def unknown_options_error(extractor: str, unknown, valid) -> ExtractorOptionError:
    """The one-line error for options ``unknown`` that ``extractor`` does not take."""
    hints = [f"{key}= is spelled {_OPTION_ALIASES[key]}= in featx" for key in unknown if key in _OPTION_ALIASES]
    message = (f"{extractor} takes no option {', '.join(sorted(unknown))}; its options are: "
               f"{', '.join(sorted(valid))}")
    return ExtractorOptionError(message + (f" ({'; '.join(hints)})" if hints else ""))


class Extractor:
    """Base class for feature extractors.

    Subclasses set ``name`` and implement :meth:`transform`; they describe the
    image they want through :attr:`preprocessing` (a JSON-able dict understood by
    :func:`featx.images.load_image`: ``size`` as ``[height, width]``,
    ``interpolation``, ``equalize``, ``keep_aspect``).

    Attributes
    ----------
    name : str
        Registry name (``hog``, ``vgg16``, ...).
    params : dict
        JSON-able parameters the extractor was built with.
    parallel : {"processes", "model"}
        ``processes``: the pipeline spreads decode + transform over worker
        processes (cheap per-image maths, e.g. HoG). ``model``: decoding runs in
        threads and :meth:`transform` is called on whole batches in the main
        process (a CNN that uses every core by itself).
    needs_fit : bool
        True when :meth:`fit` must see training images before :meth:`transform`
        (SIFT's visual vocabulary).
    """

    name: str = "base"
    parallel: str = "processes"
    needs_fit: bool = False

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)

    # -- description ---------------------------------------------------
    @property
    def preprocessing(self) -> dict:
        """How images must be decoded for this extractor (JSON-able)."""
        return {"size": None, "interpolation": "area", "equalize": False}

    @property
    def output_dim(self) -> int:
        """Length of one feature row."""
        raise NotImplementedError

    def weights_fingerprint(self) -> str | None:
        """sha256 of the weights that feed the extractor, None when it has none."""
        return None

    def spec(self) -> dict:
        """Everything that determines the features: name, params, weights, preprocessing.

        Cheap to compute (no model is built), so a finished cache is recognised fast.
        """
        return {
            "name": self.name,
            "params": _jsonable(self.params),
            "weights_sha256": self.weights_fingerprint(),
            "preprocessing": _jsonable(self.preprocessing),
        }

    def spec_hash(self, length: int = 10) -> str:
        """Short stable hash of :meth:`spec` (goes into the cache file name)."""
        blob = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:length]

    # -- learning ------------------------------------------------------
    def fit(self, images: Iterable[np.ndarray]) -> "Extractor":
        """Learn from training images (default: nothing to learn)."""
        return self

    def get_state(self) -> dict[str, np.ndarray]:
        """Arrays learned by :meth:`fit`, to be stored with the cache."""
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> "Extractor":
        """Restore what :meth:`get_state` returned."""
        return self

    # -- work ----------------------------------------------------------
    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features for a batch of uint8 RGB images, shape (len(images), output_dim), float32."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so specs compare and hash the same everywhere."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
