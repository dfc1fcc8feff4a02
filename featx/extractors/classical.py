"""Classical extractors: HoG (scikit-image) and SIFT bag of visual words (OpenCV).

Both work one image at a time, so the pipeline spreads them over worker processes; they pickle
cheaply and keep OpenCV to one thread, so several processes do not fight over the cores.

Examples
--------
>>> import numpy as np
>>> from featx.extractors import get_extractor
>>> hog = get_extractor("hog", size=64)
>>> image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
>>> hog.transform([image]).shape
(1, 1764)
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .base import Extractor, ExtractorOptionError
from .registry import ExtractorInfo, register

__all__ = ["HogExtractor", "SiftBovwExtractor", "HOG_BLOCK_NORMS", "BOVW_NORMS"]

HOG_BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
BOVW_NORMS = ("l1", "l2", "hellinger")
SIFT_DESCRIPTOR_DIM = 128


def _size_pair(value: Any, option: str) -> tuple[int, int]:
    """``64`` or ``[h, w]`` -> ``(h, w)``, both positive ints."""
    pair = (value, value) if np.isscalar(value) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v > 0 for v in pair):
        raise ExtractorOptionError(f"{option} must be a positive int or a pair of positive ints "
                         f"(height, width); got {value!r}")
    return int(pair[0]), int(pair[1])


def _size_param(pair: tuple[int, int]) -> int | list[int]:
    """How a size is kept in ``params``: an int when square, so 64 and (64, 64) hash alike."""
    return pair[0] if pair[0] == pair[1] else [pair[0], pair[1]]


def _check_choice(value: Any, choices: Sequence[str], option: str) -> str:
    if value not in choices:
        raise ExtractorOptionError(f"{option} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _check_int(value: Any, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ExtractorOptionError(f"{option} must be {kind}; got {value!r}")
    return int(value)


def _resized_image(image: np.ndarray, size_hw: tuple[int, int], grayscale: bool) -> np.ndarray:
    """A uint8 image at ``size_hw``, grayscale (H, W) or RGB (H, W, 3).

    The pipeline already decodes at the extractor's ``preprocessing`` size; this
    only resizes (area interpolation, as ``featx.images`` does by default) when
    a caller hands :meth:`transform` images of another size.
    """
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError("expected uint8 images of shape (H, W, 3) or (H, W); "
                         f"got dtype {image.dtype} and shape {image.shape} "
                         "(decode with featx.images.load_image(path, **extractor.preprocessing))")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if grayscale and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif not grayscale and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    height, width = size_hw
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


@contextlib.contextmanager
def _single_threaded_opencv() -> Iterator[None]:
    """Run OpenCV on one thread: the pipeline already gives each core its own process."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


class _ResizingExtractor(Extractor):
    """An extractor whose images are decoded to ``size_hw`` (area interpolation)."""

    size_hw: tuple[int, int]

    @property
    def preprocessing(self) -> dict:
        return {"size": list(self.size_hw), "interpolation": "area", "equalize": False}


class HogExtractor(_ResizingExtractor):
    """Histogram of oriented gradients (``skimage.feature.hog``) of the whole image.

    Parameters
    ----------
    size : int or (int, int), default 128
        Images are decoded to ``size`` x ``size`` (or ``(height, width)``).
    orientations : int, default 9
        Orientation bins per cell.
    pixels_per_cell : int or (int, int), default 8
        Cell size in pixels.
    cells_per_block : int or (int, int), default 2
        Block size in cells; blocks overlap with a stride of one cell.
    block_norm : {"L1", "L1-sqrt", "L2", "L2-Hys"}, default "L2-Hys"
        Block normalisation (see ``skimage.feature.hog``).
    color : bool, default False
        False: HoG of the grayscale image. True: gradients of the RGB image, the
        strongest channel per pixel (Dalal & Triggs). Same output length either way.
    transform_sqrt : bool, default False
        Square-root (power law) compression of the image before the gradients.

    Examples
    --------
    >>> HogExtractor(size=64).output_dim
    1764
    """

    name = "hog"

    def __init__(self, size: int | Sequence[int] = 128, orientations: int = 9,
                 pixels_per_cell: int | Sequence[int] = 8, cells_per_block: int | Sequence[int] = 2,
                 block_norm: str = "L2-Hys", color: bool = False, transform_sqrt: bool = False) -> None:
        self.size_hw = _size_pair(size, "size")
        self.cell_hw = _size_pair(pixels_per_cell, "pixels_per_cell")
        self.block_cells = _size_pair(cells_per_block, "cells_per_block")
        super().__init__(
            size=_size_param(self.size_hw),
            orientations=_check_int(orientations, "orientations"),
            pixels_per_cell=_size_param(self.cell_hw),
            cells_per_block=_size_param(self.block_cells),
            block_norm=_check_choice(block_norm, HOG_BLOCK_NORMS, "block_norm"),
            color=bool(color),
            transform_sqrt=bool(transform_sqrt),
        )
        if min(self._blocks_hw()) < 1:
            need = [cell * block for cell, block in zip(self.cell_hw, self.block_cells)]
            raise ExtractorOptionError(
                f"hog: an image of {self.size_hw[0]}x{self.size_hw[1]} pixels holds no block of "
                f"{self.block_cells} cells of {self.cell_hw} pixels; use size >= {need[0]}x{need[1]}, "
                "or smaller pixels_per_cell / cells_per_block"
            )

    def _blocks_hw(self) -> tuple[int, int]:
        """Number of block positions (rows, columns), as skimage counts them."""
        return tuple(size // cell - block + 1
                     for size, cell, block in zip(self.size_hw, self.cell_hw, self.block_cells))

    @property
    def output_dim(self) -> int:
        rows, cols = self._blocks_hw()
        return rows * cols * self.block_cells[0] * self.block_cells[1] * self.params["orientations"]

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """HoG rows for a batch of uint8 RGB images, shape (len(images), output_dim), float32."""
        from skimage.feature import hog

        color = self.params["color"]
        features = np.empty((len(images), self.output_dim), dtype=np.float32)
        with _single_threaded_opencv():
            for row, image in enumerate(images):
                pixels = _resized_image(image, self.size_hw, grayscale=not color)
                features[row] = hog(
                    pixels,
                    orientations=self.params["orientations"],
                    pixels_per_cell=self.cell_hw,
                    cells_per_block=self.block_cells,
                    block_norm=self.params["block_norm"],
                    transform_sqrt=self.params["transform_sqrt"],
                    feature_vector=True,
                    channel_axis=-1 if color else None,
                )
        return features


class SiftBovwExtractor(_ResizingExtractor):
    """Bag of visual words over OpenCV SIFT descriptors.

    :meth:`fit` clusters SIFT descriptors of the training images into ``k``
    visual words (``MiniBatchKMeans``); :meth:`transform` assigns each
    descriptor of an image to its nearest word and returns the normalised
    histogram of words. An image without any keypoint gives a row of zeros.

    Parameters
    ----------
    k : int, default 500
        Vocabulary size (output length).
    size : int or (int, int), default 256
        Images are decoded to ``size`` x ``size`` (or ``(height, width)``) grayscale.
    dense : bool, default False
        False: SIFT's own keypoints, the ``max_keypoints`` strongest. True:
        descriptors on a regular grid every ``step`` pixels, of diameter ``scale``.
    max_keypoints : int, default 500
        Cap on detected keypoints per image, strongest (largest response) first.
    step : int, default 8
        Grid spacing in pixels when ``dense``.
    scale : float, default 16.0
        Keypoint diameter in pixels when ``dense``.
    norm : {"l1", "l2", "hellinger"}, default "l2"
        Histogram normalisation; ``hellinger`` is the square root of the l1
        histogram (unit l2 norm, for linear heads on counts).
    max_fit_descriptors : int, default 200_000
        :meth:`fit` clusters a random subset (seeded) of at most this many descriptors.
    seed : int, default 0
        Seed of the descriptor subset and of k-means: same images and seed give
        the same vocabulary.
    n_jobs : int, default -1
        Processes that compute descriptors in :meth:`fit` (joblib, -1: all
        cores). Not part of the spec: it never changes the features.

    Attributes
    ----------
    vocabulary_ : ndarray of shape (k, 128), float32
        Visual words, set by :meth:`fit` or :meth:`set_state`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(4)]
    >>> sift = SiftBovwExtractor(k=8, size=96, n_jobs=1).fit(images)
    >>> rows = sift.transform(images)
    >>> rows.shape, bool(np.allclose(np.linalg.norm(rows, axis=1), 1.0))
    ((4, 8), True)
    """

    name = "sift_bovw"
    needs_fit = True

    def __init__(self, k: int = 500, size: int | Sequence[int] = 256, dense: bool = False,
                 max_keypoints: int = 500, step: int = 8, scale: float = 16.0, norm: str = "l2",
                 max_fit_descriptors: int = 200_000, seed: int = 0, n_jobs: int = -1) -> None:
        self.size_hw = _size_pair(size, "size")
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or scale <= 0:
            raise ExtractorOptionError(f"scale must be a positive number of pixels; got {scale!r}")
        super().__init__(
            k=_check_int(k, "k"),
            size=_size_param(self.size_hw),
            dense=bool(dense),
            max_keypoints=_check_int(max_keypoints, "max_keypoints"),
            step=_check_int(step, "step"),
            scale=float(scale),
            norm=_check_choice(norm, BOVW_NORMS, "norm"),
            max_fit_descriptors=_check_int(max_fit_descriptors, "max_fit_descriptors"),
            seed=_check_int(seed, "seed", minimum=0),
        )
        if self.params["max_fit_descriptors"] < self.params["k"]:
            raise ExtractorOptionError(f"max_fit_descriptors ({max_fit_descriptors}) must be at least k ({k})")
        # Not a parameter: how many processes compute descriptors never changes the result.
        self.n_jobs = n_jobs
        self.vocabulary_: np.ndarray | None = None
        self._word_sq_norms: np.ndarray | None = None
        self._sift = None  # cv2.SIFT, built on first use in each process (it does not pickle)

    @property
    def output_dim(self) -> int:
        return self.params["k"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sift"] = None
        return state

    def _sift_detector(self):
        import cv2

        if self._sift is None:
            self._sift = cv2.SIFT_create(nfeatures=0 if self.params["dense"] else self.params["max_keypoints"])
        return self._sift

    def _grid_keypoints(self) -> list:
        import cv2

        step, scale = self.params["step"], self.params["scale"]
        height, width = self.size_hw
        # Grid starts half a step in, so the grid is centred and symmetric under flips.
        return [cv2.KeyPoint(float(x), float(y), scale)
                for y in np.arange(step / 2, height, step) for x in np.arange(step / 2, width, step)]

    def descriptors(self, image: np.ndarray) -> np.ndarray:
        """SIFT descriptors of one uint8 image, shape (n, 128), uint8 (n may be 0).

        OpenCV's float SIFT descriptors are whole numbers in [0, 255], so uint8
        holds them exactly in a quarter of the memory.
        """
        gray = _resized_image(image, self.size_hw, grayscale=True)
        sift = self._sift_detector()
        if self.params["dense"]:
            keypoints, values = sift.compute(gray, self._grid_keypoints())
        else:
            keypoints, values = sift.detectAndCompute(gray, None)
            cap = self.params["max_keypoints"]
            if values is not None and len(keypoints) > cap:
                # OpenCV keeps ties at the cut, so it can return a few more than asked for.
                strongest = np.argsort([-kp.response for kp in keypoints], kind="stable")[:cap]
                values = values[np.sort(strongest)]
        if values is None or len(values) == 0:
            return np.empty((0, SIFT_DESCRIPTOR_DIM), dtype=np.uint8)
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)

    def _descriptors_of_chunk(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        with _single_threaded_opencv():
            return [self.descriptors(image) for image in images]

    def fit(self, images: Iterable[np.ndarray]) -> "SiftBovwExtractor":
        """Learn the visual vocabulary from training images (the train split only).

        Parameters
        ----------
        images : iterable of ndarray
            uint8 RGB images; a generator is consumed once, in chunks.

        Returns
        -------
        self
        """
        from joblib import Parallel, delayed
        from sklearn.cluster import MiniBatchKMeans
        from threadpoolctl import threadpool_limits

        k, seed = self.params["k"], self.params["seed"]
        image_iterator = iter(images)
        chunks = iter(lambda: list(itertools.islice(image_iterator, 32)), [])
        # With one job joblib runs the chunks in this process, one after the other.
        per_chunk = Parallel(n_jobs=self.n_jobs, backend="loky")(
            delayed(self._descriptors_of_chunk)(chunk) for chunk in chunks)
        per_image = [d for chunk in per_chunk for d in chunk]
        if not per_image:
            raise ValueError("sift_bovw.fit needs at least one training image; got none")
        descriptors = np.concatenate(per_image)
        if len(descriptors) < k:
            raise ValueError(
                f"sift_bovw.fit found {len(descriptors)} SIFT descriptors in {len(per_image)} images, "
                f"fewer than k={k} visual words; give more (or larger, more textured) training images, "
                "lower k, or use dense=True"
            )
        rng = np.random.default_rng(seed)
        if len(descriptors) > self.params["max_fit_descriptors"]:
            keep = rng.choice(len(descriptors), self.params["max_fit_descriptors"], replace=False)
            descriptors = descriptors[np.sort(keep)]
        batch_size = 2048
        kmeans = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init=1,
                                 init_size=3 * max(k, batch_size), random_state=seed)
        # One thread: k-means' OpenMP reductions give slightly different centres for
        # different thread counts (the vocabulary must depend on images and seed only),
        # and spinning OpenMP threads crawl on a busy machine (9x slower measured).
        with threadpool_limits(limits=1):
            kmeans.fit(descriptors.astype(np.float32))
        return self.set_state({"vocabulary": kmeans.cluster_centers_})

    def get_state(self) -> dict[str, np.ndarray]:
        """``{"vocabulary": (k, 128) float32}``, to be stored with the cache."""
        self._check_fitted()
        return {"vocabulary": self.vocabulary_.copy()}

    def set_state(self, state: dict[str, np.ndarray]) -> "SiftBovwExtractor":
        """Restore a vocabulary saved by :meth:`get_state`."""
        if "vocabulary" not in state:
            raise ValueError(f"sift_bovw state must hold 'vocabulary'; got keys {sorted(state)}")
        vocabulary = np.asarray(state["vocabulary"], dtype=np.float32)
        expected = (self.params["k"], SIFT_DESCRIPTOR_DIM)
        if vocabulary.shape != expected:
            raise ValueError(f"sift_bovw vocabulary must have shape {expected} (k={expected[0]}); "
                             f"got {vocabulary.shape}")
        self.vocabulary_ = np.ascontiguousarray(vocabulary)
        self._word_sq_norms = np.einsum("ij,ij->i", self.vocabulary_, self.vocabulary_)
        return self

    def _check_fitted(self) -> None:
        if self.vocabulary_ is None:
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                "sift_bovw has no visual vocabulary yet: call fit(train_images) first, "
                "or set_state({'vocabulary': ...}) with the one stored in its cache"
            )

    def nearest_words(self, descriptors: np.ndarray) -> np.ndarray:
        """Index of the nearest visual word (Euclidean) for each descriptor row."""
        self._check_fitted()
        x = np.asarray(descriptors, dtype=np.float32)
        # |x - v|^2 = |x|^2 - 2 x.v + |v|^2; |x|^2 is the same for every word.
        return np.argmin(self._word_sq_norms[None, :] - 2.0 * (x @ self.vocabulary_.T), axis=1)

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Normalised word histograms, shape (len(images), k), float32."""
        from threadpoolctl import threadpool_limits

        self._check_fitted()
        k = self.params["k"]
        histograms = np.zeros((len(images), k), dtype=np.float32)
        # One image's (n, 128) x (128, k) product is too small for BLAS threads: they
        # only spin (twice the CPU time for the same work, measured in the main process).
        with _single_threaded_opencv(), threadpool_limits(limits=1):
            for row, image in enumerate(images):
                descriptors = self.descriptors(image)
                if len(descriptors):
                    histograms[row] = np.bincount(self.nearest_words(descriptors), minlength=k)
        return _normalise_rows(histograms, self.params["norm"])


def _normalise_rows(histograms: np.ndarray, norm: str) -> np.ndarray:
    """Scale each row to unit l1 / l2 norm (or Hellinger); zero rows stay zero."""
    if norm in ("l1", "hellinger"):
        totals = histograms.sum(axis=1, keepdims=True)
    else:
        totals = np.linalg.norm(histograms, axis=1, keepdims=True)
    out = np.divide(histograms, totals, out=np.zeros_like(histograms), where=totals > 0)
    return np.sqrt(out) if norm == "hellinger" else out


def _register(cls: type[Extractor], description: str) -> None:
    """Register ``cls`` under ``cls.name``; its options and defaults come from its signature."""
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if name != "self"}
    register(ExtractorInfo(name=cls.name, factory=cls, description=description,
                           default_opts=defaults, weights_status=lambda: (True, "no weights needed"),
                           output_dim=cls().output_dim))


_register(HogExtractor, "Histogram of oriented gradients (scikit-image) of the grayscale image")
_register(SiftBovwExtractor, "Bag of visual words over OpenCV SIFT descriptors (vocabulary fitted on train)")
