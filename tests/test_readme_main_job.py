"""README's main job, replayed as written on small images: every command of its bash block, in order, in a
fresh folder, through the installed `featx` with the user's environment; then its outputs are read."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.slow


def main_job_commands() -> list[str]:
    """The lines of the bash block under README's "The main job" heading, comments and the venv line dropped."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The main job"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).rstrip()
        if line and not line.lstrip().startswith("#") and line != ". .venv/bin/activate":
            commands.append(line)
    return commands


def _photo(path: Path, kind: str, seed: int, size: int = 128) -> None:
    """A JPEG whose texture depends on the class (stripes one way or the other) with noise and blobs, so
    SIFT finds keypoints and every extractor has something to learn."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    period = 6 + seed % 5
    pattern = np.sin(2 * np.pi * (x if kind == "cat" else y) / period)
    base = 127 + 90 * pattern + rng.normal(0, 25, (size, size))
    for _ in range(6):
        cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(4, 10))]
        base[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 255)
    rgb = np.stack([base, base * 0.7 + 40, 255 - base], axis=-1).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90)


def test_the_readme_main_job_runs_as_written(tmp_path):
    commands = main_job_commands()
    assert commands[0].startswith("featx index data/train") and any(c.startswith("featx sweep") for c in commands)
    data = tmp_path / "data"
    for i in range(24):
        _photo(data / "train" / f"cat.{i}.jpg", "cat", i)
        _photo(data / "train" / f"dog.{i}.jpg", "dog", 1000 + i)
    for i in range(6):
        _photo(data / "holdout" / f"cat.{100 + i}.jpg", "cat", 100 + i)
        _photo(data / "holdout" / f"dog.{100 + i}.jpg", "dog", 1100 + i)
    for i in range(1, 12):
        _photo(data / "test1" / f"{i}.jpg", "cat" if i % 2 else "dog", 2000 + i)
    (data / "test1" / "12.jpg").write_bytes(b"not a jpeg")  # Kaggle's test folder must still get 12 rows
    (tmp_path / "cache").mkdir()

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # what the user has
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = "set -euo pipefail\n" + "\n".join(f"echo \"+ step {i} at $SECONDS s\" >&2\n{c}"
                                                for i, c in enumerate(commands)) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1500)
    output = done.stdout + done.stderr
    steps = [line for line in output.splitlines() if line.startswith("+ step ")]
    failed = commands[int(steps[-1].split()[2])] if steps else "?"
    assert done.returncode == 0, f"failed at: {failed}\n{output[-4000:]}"
    assert "Traceback" not in output and "error:" not in output.lower(), output[-6000:]

    experiment = tmp_path / "experiments" / "catsdogs"
    with open(experiment / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {"efficientnet_lite0:top_activation:avg", "hog"} <= {r["features"] for r in rows}
    assert all(r["selected_by"] == "cv5" for r in rows)
    assert (experiment / "finetune" / "model.keras").exists() and (experiment / "scratch").is_dir()
    assert (experiment / "report.md").exists()
    with open(tmp_path / "submission.csv", encoding="utf-8") as handle:
        submission = list(csv.reader(handle))
    assert submission[0] == ["id", "label"]
    assert [row[0] for row in submission[1:]] == [str(i) for i in range(1, 13)]  # every file, Kaggle's order
    assert all(0 < float(row[1]) < 1 for row in submission[1:])
    assert len(re.findall(r"accuracy", output)) >= 2  # both evaluations printed their figures
