"""End to end `featx cache` per runtime and precision, side by side in one run (ratios to Keras fp32).

    python benchmarks/bench_runtime.py --images ../shared/data/catsdogs-dev/train --limit 256

Each row builds a fresh cache of the same images (its own --cache-dir) with `build_cache`, the
code path of `featx cache`; `model-only` calls the runner on one preloaded, decoded batch set, so
the gap between the two columns is decoding and writing. Name the CPU and its flags beside any
figure you quote (printed first).
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path


def cpu_line() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = sorted(set(re.findall(r"\b(avx2|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8)\b", text)))
    import os

    return f"{model.group(1) if model else '?'}, {os.cpu_count()} cores, flags: {' '.join(flags)}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default="../shared/data/catsdogs-dev/train")
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--extractor", default="efficientnet_lite0")
    parser.add_argument("--opt", action="append", default=[])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import numpy as np

    from featx.data import build_manifest
    from featx.extractors import get_extractor, parse_opts
    from featx.images import load_image
    from featx.pipeline import build_cache, load_options
    from featx.runtime import make_runner

    print(cpu_line())
    manifest = build_manifest(args.images, val=0.1, test=0.1, seed=0)
    manifest.records = manifest.records[: args.limit]
    opts = parse_opts(args.opt)
    rows = [("keras", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("keras", "bf16")]
    n = len(manifest.records)
    results = []
    for runtime, precision in rows:
        extractor = get_extractor(args.extractor, **opts)
        extractor.precision = precision
        if runtime == "keras":
            from featx.extractors.keras_base import set_precision

            set_precision(precision)
        images = [load_image(Path(manifest.root) / r.path, **load_options(extractor.preprocessing))
                  for r in manifest.records[: 4 * args.batch_size]]
        runner = make_runner(extractor, runtime, precision)
        runner(images[: args.batch_size])  # warm-up (and IR conversion on the first openvino row)
        started = time.perf_counter()
        for i in range(0, len(images), args.batch_size):
            runner(images[i: i + args.batch_size])
        model_only = len(images) / (time.perf_counter() - started)
        cache_dir = Path(tempfile.mkdtemp(prefix="featx-bench-"))
        started = time.perf_counter()
        build_cache(manifest, extractor, cache_dir=cache_dir, batch_size=args.batch_size, runtime=runtime)
        end_to_end = n / (time.perf_counter() - started)
        shutil.rmtree(cache_dir, ignore_errors=True)
        results.append((runtime, precision, end_to_end, model_only))
        if runtime == "keras":
            set_precision("fp32")
        print(f"  {runtime:9s} {precision}: end to end {end_to_end:7.1f} img/s, model-only {model_only:7.1f} img/s",
              flush=True)
    base = results[0][2]
    print(f"\n{args.extractor} {opts or ''}, {n} images, batch {args.batch_size}")
    print("| runtime | precision | end to end img/s | vs keras fp32 | model-only img/s | end to end / model-only |")
    print("|---|---|---:|---:|---:|---:|")
    for runtime, precision, e2e, model in results:
        print(f"| {runtime} | {precision} | {e2e:.1f} | {e2e / base:.2f}x | {model:.1f} | {e2e / model:.0%} |")
    _ = np


if __name__ == "__main__":
    main()
