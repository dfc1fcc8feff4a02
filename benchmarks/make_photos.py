"""Make N labelled photos of at most SIZE px from a few thousand real ones (for benchmarks/gpu_check.sh).

Photo i is made from source i mod S of the S sources in a seeded shuffled order (so any first n mix the
classes), as a seeded random crop (60-100% of the area, aspect 3:4 to 4:3) of one source photo,
mirrored half the time, resized so its longer side is SIZE px and written as a JPEG in Kaggle's
layout (``cat.N.jpg``, ``dog.N.jpg``: the source's label). Crops of one source are near-duplicates,
so these photos are for speed and numerical checks, never for accuracy figures.

    python benchmarks/make_photos.py ../shared/data/catsdogs-dev/train /tmp/photos -n 25000 --size 200
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

EXTENSIONS = {".jpg", ".jpeg", ".png"}


def _make(job: tuple[int, str, str, int, int]) -> bool:
    index, source, out_dir, size, seed = job
    image = cv2.imread(source, cv2.IMREAD_COLOR)
    if image is None:
        return False
    rng = np.random.default_rng((seed, index))
    height, width = image.shape[:2]
    area = rng.uniform(0.6, 1.0) * height * width
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = int(min(width, round(np.sqrt(area * aspect))))
    crop_h = int(min(height, round(np.sqrt(area / aspect))))
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    crop = image[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = size / max(crop_h, crop_w)
    crop = cv2.resize(crop, (max(1, round(crop_w * scale)), max(1, round(crop_h * scale))),
                      interpolation=cv2.INTER_AREA)
    label = Path(source).name.split(".")[0]
    return cv2.imwrite(os.path.join(out_dir, f"{label}.{index}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder of cat.N.jpg / dog.N.jpg photos")
    parser.add_argument("out", type=Path, help="folder to write (created; must not hold photos already)")
    parser.add_argument("-n", type=int, default=25000, help="photos to make (default 25000)")
    parser.add_argument("--size", type=int, default=200, help="longer side in px (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    sources = sorted(str(p) for p in args.source.iterdir()
                     if p.suffix.lower() in EXTENSIONS and p.name.split(".")[0] in ("cat", "dog"))
    sources = [sources[i] for i in np.random.default_rng(args.seed).permutation(len(sources))]  # classes mixed
    if not sources:
        print(f"error: {args.source} holds no cat.N.jpg or dog.N.jpg photos; give Kaggle's train folder",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()):
        print(f"error: {args.out} is not empty; give a new folder", file=sys.stderr)
        return 2
    started = time.perf_counter()
    jobs = [(i, sources[i % len(sources)], str(args.out), args.size, args.seed) for i in range(args.n)]
    with ProcessPoolExecutor(args.workers) as pool:
        made = sum(pool.map(_make, jobs, chunksize=64))
    skipped = args.n - made
    print(f"{args.out}: {made} photos of at most {args.size} px from {len(sources)} sources in "
          f"{time.perf_counter() - started:.1f} s" + (f"; {skipped} skipped (unreadable source)" if skipped else ""))
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
