"""ImageNet weights for keras.applications models: Keras' own file names, cache and download.

``weights="imagenet"`` resolves to the very file Keras itself would download (same name, origin,
hash and ``models`` folder), so a cache filled by plain Keras serves featx and the other way
round. Offline, :class:`featx.weights.WeightsError` names the file, the folder and the URL. The
table was read out of ``keras/src/applications/*.py`` (Keras 3); the tests check it against Keras.

Examples
--------
>>> from featx.weights.keras_cache import keras_weights_file
>>> keras_weights_file("vgg16").fname
'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
>>> keras_weights_file("mobilenet_v2", input_size=(96, 96)).fname
'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5'
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import WeightsError, keras_models_dir

__all__ = ["KERAS_WEIGHTS", "KerasWeightsFile", "keras_weights_file", "resolve_keras_weights",
           "resolve_weights_option", "keras_weights_status", "check_weights_path", "load_keras_weights"]

# Seconds a stalled connection may stay silent before the download gives up
# (urllib has no timeout of its own, so an offline machine behind a firewall
# that drops packets would otherwise hang forever).
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0

_GCS = "https://storage.googleapis.com/"
_KERAS_APPS = _GCS + "tensorflow/keras-applications/"


@dataclass(frozen=True)
class KerasWeightsFile:
    """One weights file as Keras names (``fname`` in its ``models`` folder), fetches (``origin``) and
    checks it (``file_hash``: md5 or sha256, None where Keras publishes none, as for MobileNetV2)."""

    application: str
    include_top: bool
    fname: str
    origin: str
    file_hash: str | None

    @property
    def path(self) -> Path:
        """Where the file lives in the Keras cache (``keras_models_dir() / fname``)."""
        return keras_models_dir() / self.fname


def _pair(folder: str, top: tuple[str, str | None], notop: tuple[str, str | None],
          origin_names: tuple[str, str] | None = None) -> dict:
    """Table row: (fname, hash) with and without top, origin = folder + name."""
    origin_names = origin_names or (top[0], notop[0])
    return {
        True: (top[0], folder + origin_names[0], top[1]),
        False: (notop[0], folder + origin_names[1], notop[1]),
    }


def _tf_kernels(stem: str, folder: str, top_hash: str, notop_hash: str) -> dict:
    """The ``<stem>_weights_tf_dim_ordering_tf_kernels[_notop].h5`` naming of the older applications."""
    base = f"{stem}_weights_tf_dim_ordering_tf_kernels"
    return _pair(_KERAS_APPS + folder, (f"{base}.h5", top_hash), (f"{base}_notop.h5", notop_hash))


def _suffixed(stem: str, folder: str, top_hash: str, notop_hash: str) -> dict:
    """The ``<stem>.h5`` / ``<stem>_notop.h5`` naming of EfficientNet(V2) and ConvNeXt."""
    return _pair(folder, (f"{stem}.h5", top_hash), (f"{stem}_notop.h5", notop_hash))


def _mobilenet_v3(variant: str, top_hash: str, notop_hash: str) -> dict:
    model_name = f"{variant}_224_1.0_float"
    return _pair(_KERAS_APPS + "mobilenet_v3/",
                 (f"weights_mobilenet_v3_{model_name}.h5", top_hash),
                 (f"weights_mobilenet_v3_{model_name}_no_top_v2.h5", notop_hash))


# MobileNetV2 has one file per input resolution; Keras falls back to 224 for
# any size not in this list (or not square).
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)
_MOBILENET_V2 = ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}.h5",
                 "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5")

#: featx application name -> {include_top: (fname, origin, file_hash)}.
KERAS_WEIGHTS: dict[str, dict[bool, tuple[str, str, str | None]]] = {
    **{
        name: _tf_kernels(name, folder, top_hash, notop_hash)
        for name, folder, top_hash, notop_hash in [
            ("vgg16", "vgg16/", "64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc"),
            ("resnet50", "resnet/", "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
            ("resnet101", "resnet/", "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
            ("inception_v3", "inception_v3/", "9a0d58056eeedaa3f26cb7ebd46da564",
             "bcbd6486424b2319ff4ef7d526e38f63"),
            ("xception", "xception/", "0a58e3b7378bc2990ea3b43d5981f1f6", "b0042744bf5b25fce3cb969f33bebb97"),
            ("densenet121", "densenet/", "9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738"),
        ]
    },
    "mobilenet_v2": _pair(_KERAS_APPS + "mobilenet_v2/", (_MOBILENET_V2[0], None),
                          (_MOBILENET_V2[1], None)),
    "mobilenet_v3_small": _mobilenet_v3("small", "8768d4c2e7dee89b9d02b2d03d65d862",
                                        "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "mobilenet_v3_large": _mobilenet_v3("large", "59e551e166be033d707958cf9e29a6a7",
                                        "07fb09a5933dd0c8eaafa16978110389"),
    "nasnetmobile": _pair(_KERAS_APPS + "nasnet/",
                          ("nasnet_mobile.h5", "020fb642bf7360b370c678b08e0adf61"),
                          ("nasnet_mobile_no_top.h5", "1ed92395b5b598bdda52abe5c0dbfd63"),
                          origin_names=("NASNet-mobile.h5", "NASNet-mobile-no-top.h5")),
    **{
        f"efficientnet_b{index}": _suffixed(f"efficientnetb{index}", _GCS + "keras-applications/", *hashes)
        for index, hashes in enumerate([
            ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
            ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
            ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
            ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
            ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
            ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
            ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
            ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
        ])
    },
    **{
        f"efficientnetv2_{variant}": _suffixed(f"efficientnetv2-{variant}", _KERAS_APPS + "efficientnet_v2/",
                                               *hashes)
        for variant, hashes in {
            "b0": ("21ecbf6da12460d5c40bb2f29ceb2188", "893217f2bb855e2983157299931e43ff"),
            "b1": ("069f0534ff22adf035c89e2d9547a9dc", "0e80663031ca32d657f9caa404b6ec37"),
            "b2": ("424e49f28180edbde1e94797771950a7", "1dfe2e7a5d45b6632553a8961ea609eb"),
            "b3": ("1f1fc43bd98a6e4fd8fdfd551e02c7a0", "f6abf7b5849ac99a89b50dd3fd532856"),
            "s": ("e1d88a8495beba45748fedd0cecbe016", "af0682fb74e8c54910f2d4393339c070"),
        }.items()
    },
    **{
        f"convnext_{size}": _suffixed(f"convnext_{size}", _KERAS_APPS + "convnext/", *hashes)
        for size, hashes in {
            "tiny": ("8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff",
                     "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
            "small": ("ce1277d8f1ee5a0ef0e171469089c18f5233860ceaf9b168049cb9263fd7483c",
                      "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab"),
            "base": ("52cbb006d3dadd03f6e095a8ca1aca47aecdd75acb4bc74bce1f5c695d0086e6",
                     "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45"),
        }.items()
    },
}


def keras_weights_file(application: str, include_top: bool = False,
                       input_size: tuple[int, int] | None = None) -> KerasWeightsFile:
    """The ImageNet weights file Keras uses for ``application`` (a key of :data:`KERAS_WEIGHTS`).

    ``include_top=False`` gives the convolutional base's file (``..._notop.h5``). ``input_size``
    matters for MobileNetV2 only, which ships one file per resolution (96, 128, 160, 192, 224);
    other sizes use the 224 file, as Keras does.
    """
    row = KERAS_WEIGHTS.get(application)
    if row is None:
        raise ValueError(
            f"no Keras ImageNet weights known for {application!r}; "
            f"expected one of: {', '.join(sorted(KERAS_WEIGHTS))}"
        )
    fname, origin, file_hash = row[bool(include_top)]
    if "{rows}" in fname:
        rows = 224
        if input_size is not None and input_size[0] == input_size[1] and input_size[0] in MOBILENET_V2_SIZES:
            rows = int(input_size[0])
        fname, origin = fname.format(rows=rows), origin.format(rows=rows)
    return KerasWeightsFile(application, bool(include_top), fname, origin, file_hash)


def resolve_keras_weights(application: str, include_top: bool = False,
                          input_size: tuple[int, int] | None = None) -> Path:
    """Path of the ImageNet weights file, downloading it the Keras way when missing.

    The Keras cache is looked at first; a file found there is used as it is.
    Otherwise ``keras.utils.get_file`` fetches it with Keras' own name, origin
    and hash into the same folder.

    Raises
    ------
    featx.weights.WeightsError
        When the file is missing and cannot be downloaded; the message names the
        file, the folder and the URL, and the ``--opt weights=PATH`` alternative.
    """
    wanted = keras_weights_file(application, include_top, input_size)
    if wanted.path.is_file():
        return wanted.path
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        import keras

        return Path(keras.utils.get_file(wanted.fname, wanted.origin, cache_subdir="models",
                                         file_hash=wanted.file_hash, cache_dir=str(keras_models_dir().parent)))
    except Exception as error:  # urllib, hash mismatch, disk full...: all mean "not available"
        reason = f"{type(error).__name__}: {error}".strip().rstrip(".")
        kind = "with its ImageNet classifier" if wanted.include_top else "without its classifier top"
        raise WeightsError(
            f"{wanted.application} ImageNet weights ({kind}) are not in the Keras cache and could not be "
            f"downloaded ({reason}). On a connected machine fetch {wanted.origin} and save it as "
            f"{wanted.path} (file {wanted.fname} in folder {wanted.path.parent}; $KERAS_HOME moves "
            f"the folder), or pass a local weights file with --opt weights=PATH."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def resolve_weights_option(weights: str | os.PathLike | None, application: str, include_top: bool = False,
                           input_size: tuple[int, int] | None = None) -> Path | None:
    """The file behind a ``weights=`` option: None, ``"imagenet"`` (Keras' file) or a path.

    Returns
    -------
    Path or None
        None for random initialisation (``weights=None``).
    """
    if weights is None:
        return None
    if weights == "imagenet":
        return resolve_keras_weights(application, include_top, input_size)
    return check_weights_path(weights)


def keras_weights_status(application: str, include_top: bool = False,
                         input_size: tuple[int, int] | None = None) -> tuple[bool, str]:
    """(available offline, detail) for ``featx extractors``; never downloads."""
    wanted = keras_weights_file(application, include_top, input_size)
    if wanted.path.is_file():
        return True, f"Keras cache: {wanted.path}"
    return False, f"downloads on first use to {wanted.path} (from {wanted.origin})"


def check_weights_path(weights: str | os.PathLike) -> Path:
    """A user-given weights file, checked to exist and to be a Keras HDF5 weights file."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {str(path)!r} does not exist; expected weights='imagenet', None, "
            "or the path of a Keras .h5 / .weights.h5 file"
        )
    if not path.name.endswith((".h5", ".hdf5")):
        raise WeightsError(
            f"weights file {str(path)!r} is not a Keras HDF5 weights file; expected a name ending "
            "in .h5 or .weights.h5 (save one with model.save_weights('name.weights.h5'))"
        )
    return path


def load_keras_weights(model, path: str | os.PathLike) -> None:
    """``model.load_weights(path)``, with an error that says which file did not fit which model.

    Both Keras formats are read: the legacy ``.h5`` files Keras downloads for its
    applications and the ``.weights.h5`` files ``Model.save_weights`` writes
    (told apart by their content, so a renamed file still loads).
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:  # the legacy layout has ``layer_names`` or ``model_weights``
            keras3_file = "layer_names" not in handle.attrs and "model_weights" not in handle
        if keras3_file and not path.name.endswith(".weights.h5"):
            # Keras picks the reader from the file name: give it the name it expects.
            with tempfile.TemporaryDirectory(prefix="featx-weights-") as folder:
                alias = Path(folder) / "renamed.weights.h5"
                alias.symlink_to(path.resolve())
                model.load_weights(str(alias))
        else:
            model.load_weights(str(path))
    except Exception as error:
        raise WeightsError(
            f"weights file {str(path)!r} does not fit model {model.name!r} "
            f"({len(model.weights)} weight arrays): {type(error).__name__}: {error}"
        ) from error

