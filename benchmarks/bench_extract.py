"""Speed of CNN feature extraction per runtime and precision, side by side in one run.

For each model (EfficientNet-Lite0, VGG16 block5_pool), over the same images:

``recipes fp32``
    What the Keras transfer-learning recipes do: ``keras.utils.load_img`` + ``img_to_array`` per
    image, stack, preprocess, ``predict_on_batch``; one batch after another.
``decode-only``
    ``featx.datasets.iter_batches`` (featx's decode threads, reduced-DCT JPEG decoding) alone.
``<runtime> <precision>`` end to end
    ``featx.pipeline.build_cache`` into a fresh cache folder: the path of ``featx cache``
    (decode threads, model, writer thread, HDF5 publish), timed call to return. keras fp32/bf16,
    openvino fp32/bf16/int8 (the int8 IR is calibrated and the models compiled before timing,
    so every row is steady state).
``<runtime> <precision>`` model-only
    The same runner on batches decoded beforehand: the model's ceiling. ``recipes fp32`` has one
    too: its ``predict_on_batch`` calls alone (each on its preprocessed batch), timed inside the loop.
``keras fp32 (before)``
    The Keras runner as it was before issue 20 (numpy ``preprocess`` on the calling thread, then
    ``predict_on_batch``), end to end and model-only, beside today's ``keras fp32`` in the same run;
    a note gives, for both, what a fresh model costs once (the first batch, with its trace) and the
    first batch of another size (a dataset's short last batch).

Each reduced precision's features are compared with the fp32 ones by cosine only when the models
hold the same weights (checked: a hash of every weight array of the model each runtime runs or
converts); otherwise the note says the weights differ and prints no cosine. ``--repeat N`` times
every row N times, interleaved, and keeps each row's fastest (a loaded machine).

The table gives img/s, the ratio to keras fp32 end to end, and each end-to-end row as a share of
min(model-only, decode-only), i.e. how close the pipeline gets to its limit (and which one limits).

``--many 25000`` adds the 25k-image run: 200-px JPEGs generated from the photos by flips and crops
into a temporary folder (removed afterwards, never in the repository), and the wall time of the
``featx cache`` command for EfficientNet-Lite0 with ``--runtime keras`` and ``--runtime openvino``.

VGG16's ImageNet file is not on this machine and it cannot download: a model whose weights are
missing runs with random weights of the same architecture (same speed), and the output says so.

    .venv/bin/python benchmarks/bench_extract.py [--data DIR] [--limit 256] [--many 25000]
        [--models efficientnet_lite0,vgg16] [--batch-size 32] [--weights imagenet|random]
        [--precisions auto|fp32,bf16,int8]   (auto: bf16 rows only on a CPU with avx512_bf16/AMX)
        [--runtimes keras,openvino] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from featx.data import build_manifest  # noqa: E402
from featx.datasets import decode_threads, iter_batches  # noqa: E402
from featx.extractors import get_extractor  # noqa: E402
from featx.pipeline import build_cache  # noqa: E402
from featx.runtime import make_runner  # noqa: E402
from featx.runtime.hardware import cpu_has_bf16  # noqa: E402
from featx.weights import WeightsError  # noqa: E402

ROWS = (("keras", "fp32"), ("keras", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))
MODELS = {"efficientnet_lite0": {}, "vgg16": {"layer": "block5_pool"}}


def cpu_line() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = sorted(set(re.findall(r"\b(avx2|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8|amx_tile)\b", text)))
    return f"CPU: {model.group(1) if model else '?'}, {os.cpu_count()} cores, flags: {' '.join(flags)}"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def make_extractor(name: str, weights: str, precision: str):
    """The extractor at ``precision``, model built; random weights (and a note) when ImageNet's are
    not offline, seeded so every precision of a model starts from the same random weights."""
    import keras

    options = {**MODELS.get(name, {}), "weights": None if weights == "random" else "imagenet",
               "precision": precision}
    extractor = get_extractor(name, **options)
    try:
        if options["weights"]:
            extractor.weights_fingerprint()  # resolves the weights now
            extractor.fp32_model() if precision == "int8" else extractor.model  # noqa: B018
            return extractor, ""
    except (WeightsError, FileNotFoundError) as error:
        note = (f"{name}: ImageNet weights not available offline ({str(error).splitlines()[0][:120]}...); "
                "timed with random weights of the same architecture (same speed, meaningless features)")
    else:
        note = ""
    extractor = get_extractor(name, **{**options, "weights": None})
    keras.utils.set_random_seed(0)
    extractor.fp32_model() if precision == "int8" else extractor.model  # noqa: B018
    return extractor, note


def list_manifest(folder: Path, limit: int | None):
    if not folder.is_dir():
        raise SystemExit(f"--data {folder}: no such folder (expected a folder of images, e.g. cat.N.jpg)")
    manifest = build_manifest(folder, layout="auto", hash_files=False)
    return dataclasses.replace(manifest, records=manifest.records[:limit] if limit else manifest.records)


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def run_recipes(extractor, paths, batch_size):
    """The recipes' loop; returns (features, seconds spent in ``predict_on_batch``)."""
    import keras

    model = extractor.model
    outputs, model_seconds = [], 0.0
    for start in range(0, len(paths), batch_size):
        batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=tuple(extractor.input_size)))
                          for p in paths[start:start + batch_size]])
        inputs = extractor.preprocess(batch)
        started = time.perf_counter()
        outputs.append(np.asarray(model.predict_on_batch(inputs)))
        model_seconds += time.perf_counter() - started
    return np.concatenate(outputs).reshape(len(paths), -1), model_seconds


def weights_digest(model) -> str:
    """sha256 of every weight array of ``model``, in order (as float32: mixed precision keeps them so)."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def runtime_weights(extractor, runtime: str) -> str:
    """The digest of the weights ``runtime`` computes with: the model OpenVINO converts (``fp32_model()``)
    or the one Keras runs (``model``)."""
    return weights_digest(extractor.fp32_model() if runtime == "openvino" else extractor.model)


@contextlib.contextmanager
def keras_runner_before():
    """The Keras runner as it was before issue 20: numpy ``preprocess`` on the calling thread, then
    ``predict_on_batch`` (``KerasExtractor.transform``'s path when it has no graph forward)."""
    from unittest import mock

    from featx.extractors.keras_base import KerasExtractor

    with mock.patch.object(KerasExtractor, "_forward", lambda self: None):
        yield


def run_decode(manifest, groups, preprocessing, threads):
    return [images for images, _, _ in iter_batches(str(manifest.root), groups, preprocessing, threads)]


def run_model(runner, batches):
    return np.concatenate([runner(batch) for batch in batches])


def run_cache(manifest, extractor, runtime, batch_size):
    from featx.cache import open_cache

    cache_dir = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    try:
        result = build_cache(manifest, extractor, cache_dir, batch_size=batch_size, runtime=runtime)
        if result.computed != len(manifest.records) or result.failed:
            raise SystemExit(f"the cache run did not compute every image: {result}")
        with open_cache(result.path) as cache:
            return cache.features[:]
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def cosine_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def bench_model(name, args, manifest, notes):
    from featx.runtime.openvino import calibration_set

    paths = [str(manifest.root / r.path) for r in manifest.records]
    n = len(paths)
    weights = args.weights
    reference, note = make_extractor(name, weights, "fp32")
    if note:
        notes.append(note)
        weights = "random"
    groups = [[r.path for r in manifest.records[i:i + args.batch_size]]
              for i in range(0, len(manifest.records), args.batch_size)]
    threads = decode_threads()
    first = run_decode(manifest, groups[:1], reference.preprocessing, threads)[0]  # warms the page cache too
    reference.model.predict_on_batch(reference.preprocess(first.astype(np.float32)))  # the recipes' trace
    reference_weights = runtime_weights(reference, "keras")
    calibration = calibration_set(manifest, seed=manifest.seed)

    rows = [row for row in ROWS if row[1] in args.precisions and row[0] in args.runtimes]
    if ("keras", "fp32") in rows:
        rows.insert(0, ("keras", "fp32 (before)"))
    runners = {}
    for runtime, precision in rows:  # converts/quantizes/compiles and warms up before any timing
        plain = precision.split()[0]
        extractor = reference if plain == "fp32" and runtime == "keras" else make_extractor(name, weights, plain)[0]
        runners[(runtime, precision)] = (extractor, make_runner(extractor, runtime, plain, calibration=calibration))

    best: dict[str, tuple[float, float | None]] = {}
    outputs: dict[str, np.ndarray] = {}

    def keep(key, seconds, model_seconds=None):
        old = best.get(key)
        best[key] = (min(seconds, old[0]) if old else seconds,
                     None if model_seconds is None else min(model_seconds, old[1]) if old else model_seconds)

    for repeat in range(args.repeat):
        seconds, batches = timed(run_decode, manifest, groups, reference.preprocessing, threads)
        keep("decode-only", seconds)
        print(f"  {name} decode-only: {n / seconds:.1f} img/s ({threads} threads)", flush=True)
        seconds, (_, recipes_model) = timed(run_recipes, reference, paths, args.batch_size)
        keep("recipes fp32", seconds, recipes_model)
        print(f"  {name} recipes fp32: {n / seconds:.1f} img/s, its predict_on_batch calls {n / recipes_model:.1f} "
              f"img/s", flush=True)
        for (runtime, precision), (extractor, runner) in runners.items():
            with keras_runner_before() if precision == "fp32 (before)" else contextlib.nullcontext():
                runner(batches[0])  # warm-up: traced graph / compiled model
                model_seconds, model_out = timed(run_model, runner, batches)
                cache_seconds, cache_out = timed(run_cache, manifest, extractor, runtime, args.batch_size)
            key = f"{runtime} {precision}"
            keep(key, cache_seconds, model_seconds)
            outputs[key] = cache_out
            if not np.allclose(cache_out, model_out, rtol=1e-3, atol=1e-3 * float(np.abs(model_out).max() or 1)):
                notes.append(f"{name} {key}: cache features differ from model-only "
                             f"(max abs diff {np.abs(cache_out - model_out).max():.3g})")
            print(f"  {name} {key}: end to end {n / cache_seconds:.1f} img/s, "
                  f"model-only {n / model_seconds:.1f} img/s, load {load_average()}", flush=True)

    if ("keras", "fp32") in rows:  # what a `featx cache` run pays once, and the timed rows above do not
        short = batches[0][:len(batches[0]) // 2 + 1]
        for label, switch in (("keras fp32 (before)", keras_runner_before), ("keras fp32", contextlib.nullcontext)):
            fresh = make_extractor(name, weights, "fp32")[0]
            runner = make_runner(fresh, "keras", "fp32")
            with switch():
                first, _ = timed(runner, batches[0])
                again, _ = timed(runner, batches[0])
                other, _ = timed(runner, short)
            notes.append(f"{name} {label}, fresh model: first batch of {len(batches[0])} {first:.2f} s (trace), "
                         f"the next {again:.2f} s, then a batch of {len(short)} {other:.2f} s")

    source = next((key for key in ("keras fp32", "openvino fp32") if key in outputs), None)
    for (runtime, precision), (extractor, _) in runners.items():
        if source is None or precision.startswith("fp32"):
            continue
        key = f"{runtime} {precision}"
        if runtime_weights(extractor, runtime) != reference_weights:
            notes.append(f"{name} {key}: the {runtime} model holds other weights than the keras fp32 one: "
                         "no cosine (it would compare two different networks)")
            continue
        cosine = cosine_rows(outputs[source], outputs[key])
        notes.append(f"{name} {key}: cosine to {source} features (same weights, checked) min {cosine.min():.4f}, "
                     f"mean {cosine.mean():.4f}")
    return {key: best[key] for key in ["decode-only", "recipes fp32", *[f"{r} {p}" for r, p in rows]]}


def print_table(name, n, rows):
    base_key = "keras fp32" if "keras fp32" in rows else "recipes fp32"
    base = n / rows[base_key][0]
    decode_rate = n / rows["decode-only"][0]
    print(f"\n{name}, {n} images\n")
    # When decoding and the model both keep every core busy, they share the cores: an image then
    # costs the sum of its decode and model times, 1 / (1/model + 1/decode) img/s at best.
    print(f"| row | end to end img/s | vs {base_key} | model-only img/s | end to end / min(model, decode) | limit "
          "| end to end / shared-core bound |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for key, (seconds, model_seconds) in rows.items():
        rate = n / seconds
        if model_seconds is None:
            print(f"| {key} | {rate:.1f} | {rate / base:.2f}x | | | | |")
            continue
        model_rate = n / model_seconds
        if key == "recipes fp32":  # decodes with keras.utils.load_img, one image after another
            print(f"| {key} | {rate:.1f} | {rate / base:.2f}x | {model_rate:.1f} | | | |")
            continue
        limit = min(model_rate, decode_rate)
        shared = 1 / (1 / model_rate + 1 / decode_rate)
        print(f"| {key} | {rate:.1f} | {rate / base:.2f}x | {model_rate:.1f} | {100 * rate / limit:.0f}% | "
              f"{'model' if model_rate < decode_rate else 'decode'} | {100 * rate / shared:.0f}% |")


def make_many(photos: list[Path], n: int, folder: Path) -> None:
    """``n`` 200-px JPEGs from ``photos`` by flips and crops (variant k of photo i: a different crop)."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True)
    for index in range(n):
        source = photos[index % len(photos)]
        variant = index // len(photos)
        with Image.open(source) as image:
            image = image.convert("RGB")
            if variant % 2:
                image = ImageOps.mirror(image)
            width, height = image.size
            margin = 0.04 * (variant // 2 % 5)
            image = image.crop((int(margin * width), int(margin * height),
                                int((1 - margin / 2) * width), int((1 - margin / 2) * height)))
            image.thumbnail((200, 200))
            label = source.name.split(".")[0]
            image.save(folder / f"{label}.{index}.jpg", quality=90)


def bench_many(args) -> None:
    photos = sorted(args.data.glob("*.jpg"))
    tmp = Path(tempfile.mkdtemp(prefix="featx-25k-"))
    try:
        started = time.perf_counter()
        make_many(photos, args.many, tmp / "train")
        print(f"\n{args.many} 200-px images generated in {time.perf_counter() - started:.0f} s under {tmp}")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        for runtime in ("keras", "openvino"):
            command = [sys.executable, str(REPO_ROOT / "cli.py"), "cache", str(tmp / "train"),
                       "--extractor", "efficientnet_lite0", "--runtime", runtime, "--cache-dir", str(tmp / runtime)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - started
            last = (done.stdout.strip().splitlines() or ["?"])[-1]
            print(f"featx cache efficientnet_lite0 --runtime {runtime}: {seconds:.1f} s wall "
                  f"(exit {done.returncode}): {last}", flush=True)
            if done.returncode:
                print(done.stderr[-2000:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / ".." / "shared" / "data" / "catsdogs-dev" / "train")
    parser.add_argument("--limit", type=int, default=256, help="images for the side-by-side rows (first, sorted)")
    parser.add_argument("--models", default="efficientnet_lite0,vgg16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weights", choices=("imagenet", "random"), default="imagenet")
    parser.add_argument("--many", type=int, default=0, help="also time `featx cache` on this many generated images")
    parser.add_argument("--runtimes", default="keras,openvino", help="comma-separated of keras,openvino")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time every row this many times, interleaved, and keep the fastest")
    parser.add_argument("--precisions", default="auto",
                        help="comma-separated of fp32,bf16,int8; auto: all three on a CPU with avx512_bf16/AMX, "
                             "fp32,int8 elsewhere (OpenVINO has no bf16 there, Keras only emulates it)")
    args = parser.parse_args(argv)
    args.precisions = (("fp32", "bf16", "int8") if cpu_has_bf16() else ("fp32", "int8")) \
        if args.precisions == "auto" else tuple(args.precisions.split(","))
    args.runtimes = tuple(r for r in args.runtimes.split(",") if r)
    args.data = args.data.resolve()
    print(cpu_line())
    manifest = list_manifest(args.data, args.limit)
    print(f"{len(manifest.records)} images from {manifest.root}, batches of {args.batch_size}; "
          f"load average before: {load_average()}")
    notes, tables = [], []
    for name in [n for n in args.models.split(",") if n]:
        tables.append((name, bench_model(name, args, manifest, notes)))
    print(f"\nload average after: {load_average()}")
    for name, rows in tables:
        print_table(name, len(manifest.records), rows)
    for note in notes:
        print(f"note: {note}")
    if args.many:
        bench_many(args)


if __name__ == "__main__":
    main()
