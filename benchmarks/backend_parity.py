"""The same weights on Keras' two backends: fp32 features of real photos from ``featx cache --runtime keras`` run
with KERAS_BACKEND=tensorflow and with KERAS_BACKEND=torch, compared row by row; and the speed of each, measured
in the same run.

    python benchmarks/backend_parity.py ../shared/data/catsdogs-dev/train --n 64

Backbones: EfficientNet-Lite0 with its real ImageNet weights (converted from the PyTorch package), and
MobileNetV2 (Keras' preprocess_input) and VGG16 (caffe preprocessing) with seeded random weights from files
written here (nothing downloads). Prints a Markdown table: the largest difference as a fraction of the
largest feature, the smallest and mean row cosine, and img/s of each backend.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

WEIGHTS = """
import os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras, numpy as np
keras.utils.set_random_seed(0)
out = sys.argv[1]
model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
for layer in norms:
    layer.momentum = 0.0
model(np.random.default_rng(0).uniform(-1, 1, (8, 224, 224, 3)).astype(np.float32), training=True)
for layer in norms:
    layer.momentum = 0.99
model.save_weights(os.path.join(out, "mobilenet_v2.weights.h5"))
keras.applications.VGG16(include_top=False, weights=None).save_weights(os.path.join(out, "vgg16.weights.h5"))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--n", type=int, default=64, help="photos (the first N cats and N dogs by number / 2)")
    args = parser.parse_args(argv)
    featx = str(Path(sys.executable).with_name("featx"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "photos"
        folder.mkdir()
        for label in ("cat", "dog"):
            for i in range(1, args.n // 2 + 1):
                source = args.photos / f"{label}.{i}.jpg"
                if source.exists():
                    (folder / source.name).symlink_to(source.resolve())
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        env["FEATX_WEIGHTS"] = str(tmp / "weights")
        subprocess.run([sys.executable, "-c", WEIGHTS, str(tmp)], check=True, env=env, capture_output=True)
        cases = {
            "efficientnet_lite0 (ImageNet weights)": ["-e", "efficientnet_lite0"],
            "keras:mobilenet_v2 (seeded weights)": ["-e", "keras:mobilenet_v2", "--opt",
                                                    f"weights={tmp / 'mobilenet_v2.weights.h5'}"],
            "vgg16 block5_pool avg (seeded weights)": ["-e", "vgg16", "--opt", "pool=avg", "--opt",
                                                       f"weights={tmp / 'vgg16.weights.h5'}"],
        }
        print("| backbone | photos | max abs diff / max abs feature | row cosine min / mean | "
              "TensorFlow img/s | PyTorch img/s |\n|---|---:|---:|---:|---:|---:|")
        for name, options in cases.items():
            features, speed = {}, {}
            for backend in ("tensorflow", "torch"):
                out = tmp / f"cache-{backend}-{len(features)}-{abs(hash(name))}"
                subprocess.run([featx, "cache", str(folder), *options, "--runtime", "keras", "--precision", "fp32",
                                "--cache-dir", str(out)], check=True, env={**env, "KERAS_BACKEND": backend},
                               capture_output=True)
                with h5py.File(next(out.glob("*.h5")), "r") as h5:
                    features[backend] = h5["features"][:].astype(np.float64)
                    speed[backend] = float(h5.attrs["images_per_second"])
            a, b = features["tensorflow"], features["torch"]
            cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            print(f"| {name} | {len(a)} | {np.abs(a - b).max() / np.abs(a).max():.2e} | "
                  f"{cosine.min():.8f} / {cosine.mean():.8f} | {speed['tensorflow']:.1f} | {speed['torch']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
