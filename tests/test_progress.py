"""Progress off a terminal: a plain line every few seconds (done/total, img/s, ETA), never silence."""

from __future__ import annotations

import io

from typer.testing import CliRunner

from conftest import make_kaggle_images
from featx.cli import app
from featx.progress import LineProgress, RichBar


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_line_progress_prints_every_interval_with_rate_and_eta():
    stream, clock = io.StringIO(), _Clock()
    progress = LineProgress(stream, interval=5, clock=clock)
    progress.start("cache vgg16", 1000)
    progress.advance(200)  # rows a resumed cache already had: not part of the rate
    for _ in range(4):
        clock.now += 2
        progress.advance(100)  # 50 img/s
    progress.stop()
    lines = stream.getvalue().splitlines()
    # t=4s (first line after 5 s is at t=6), then the final line at stop
    assert lines == ["cache vgg16: 500/1000 (50%) 50.0 img/s, eta 10s, elapsed 6s",
                     "cache vgg16: 600/1000 (60%) 50.0 img/s, eta 8s, elapsed 8s"]


def test_rich_bar_off_a_terminal_prints_lines():
    stream = io.StringIO()
    from rich.console import Console

    bar = RichBar(Console(file=stream, force_terminal=False), interval=0)
    bar.start("work", 3)
    bar.advance(1)
    bar.advance(2)
    bar.stop()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("work: 3/3 (100%)") and "eta done" in lines[-1]
    assert any(line.startswith("work: 1/3 (33%)") for line in lines)


def test_cli_cache_in_a_log_prints_progress_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_PROGRESS_SECONDS", "0")  # every update, so a tiny run shows several
    folder = make_kaggle_images(tmp_path / "p", 40)
    result = CliRunner().invoke(app, ["cache", str(folder), "--extractor", "hog", "--opt", "size=32",
                                      "--cache-dir", str(tmp_path / "c"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("hog features: ")]
    assert len(lines) >= 2 and lines[-1].startswith("hog features: 80/80 (100%)"), result.output
    assert all(" img/s, eta " in line for line in lines)
