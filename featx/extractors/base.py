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

__all__ = ["Extractor", "ExtractorOptionError", "unknown_options_error", "CLASSICAL_PRECISIONS"]

#: What an extractor without a model computes in (NumPy/OpenCV/scikit-image maths).
CLASSICAL_PRECISIONS = ("fp32",)


class ExtractorOptionError(UserError, ValueError):
    """An extractor name, option or option value the user gave that featx does not take.

    A user's mistake: the command line prints the message as one line and exits 2. The message
    names the option, the extractor and the valid choices.
    """


# Spellings users bring from Keras/timm, and the option featx calls them.
_OPTION_ALIASES = {"pooling": "pool", "layers": "layer", "weight": "weights", "cut": "layer",
                   "dtype": "precision", "size": "input_size"}


def unknown_options_error(extractor: str, unknown: Iterable[str], valid: Sequence[str]) -> ExtractorOptionError:
    """The one-line error for options ``unknown`` that ``extractor`` does not take.

    Examples
    --------
    >>> print(unknown_options_error("vgg16", ["pooling"], ["layer", "pool", "weights", "precision"]))
    vgg16 has no option 'pooling'; options are: layer, pool, weights, precision (pooling= is spelled pool= in featx)
    """
    import difflib

    valid = list(valid)
    hints = []
    for key in sorted(unknown):
        alias = _OPTION_ALIASES.get(key)
        if alias in valid:
            hints.append(f"{key}= is spelled {alias}= in featx")
        else:
            close = difflib.get_close_matches(key, valid, n=1)
            if close:
                hints.append(f"did you mean {close[0]}=?")
    message = (f"{extractor} has no option {', '.join(map(repr, sorted(unknown)))}; "
               f"options are: {', '.join(valid)}")
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
    precisions : tuple of str
        Compute precisions the extractor supports; :attr:`precision` is one of them.
        Classical extractors compute in fp32 only; Keras CNNs in fp32, bf16 and fp16.
    """

    name: str = "base"
    parallel: str = "processes"
    needs_fit: bool = False
    precisions: tuple[str, ...] = CLASSICAL_PRECISIONS

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)

    @property
    def precision(self) -> str:
        """The compute precision; setting it checks it against :attr:`precisions`."""
        return getattr(self, "_precision", self.precisions[0])

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = self.check_precision(value)

    def check_precision(self, precision: str) -> str:
        """``precision`` when this extractor computes in it, else a user error naming the choices.

        Raises
        ------
        ExtractorOptionError
            E.g. ``--precision bf16`` for ``hog``, which computes in fp32 only.

        Examples
        --------
        >>> from featx.extractors import get_extractor
        >>> get_extractor("hog", size=64).check_precision("fp32")
        'fp32'
        """
        if precision not in self.precisions:
            only = " only" if len(self.precisions) == 1 else ""
            raise ExtractorOptionError(
                f"{self.name} computes in {', '.join(self.precisions)}{only}; precision {precision!r} "
                f"is not supported (choices: {', '.join(self.precisions)})"
            )
        return precision

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

    def fit(self, images: Iterable[np.ndarray]) -> "Extractor":
        """Learn from training images (default: nothing to learn)."""
        return self

    def get_state(self) -> dict[str, np.ndarray]:
        """Arrays learned by :meth:`fit`, to be stored with the cache."""
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> "Extractor":
        """Restore what :meth:`get_state` returned."""
        return self

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features for a batch of uint8 RGB images, shape (len(images), output_dim), float32."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so specs compare and hash the same everywhere."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
