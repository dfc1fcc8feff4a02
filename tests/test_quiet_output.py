"""Quiet, truthful output (issue 20, point 3), read whole, from the real command line as a user runs it.

Each command runs in a subprocess with the user's environment: no ``TF_CPP_MIN_LOG_LEVEL`` (this
test process sets it, see conftest.py) and no state a command line passes to its workers. Asserted:
no TensorFlow/absl/oneDNN start-up lines unless ``--verbose``; the sweep counts configs/s; no
progress line for work with nothing to do; no ``.lock`` file left; ``cache``, ``predict`` and
``evaluate`` print the layout and warnings as ``index`` does; numeric options refused in one line;
Ctrl-C one line and a rerun that accounts for every row; errors that advise what can be done;
``--help`` readable at 80 columns; one summary line on stdout.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import make_image, make_kaggle_images
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.pipeline import build_cache
from featx.quiet import filter_log_lines

FEATX = str(Path(sys.executable).with_name("featx"))
TF_LINES = re.compile(r"absl::InitializeLog|oneDNN custom operations|port\.cc|cpu_feature_guard|"
                      r"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+", re.M)
SWEEP = ("--heads", "logreg", "--no-learning-curve", "--no-ensemble", "--n-boot", "20", "--cv", "2")


def _user_env(**extra) -> dict:
    """The environment of a user's shell: what this test process sets for itself is left out."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FEATX_QUIET_TF")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _featx(*args, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([FEATX, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=_user_env(**env))


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def hog_cache(tmp_path) -> Path:
    manifest = build_manifest(make_kaggle_images(tmp_path / "photos", 12), seed=0)
    return build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path / "cache", workers=1).path


@pytest.fixture
def experiment(hog_cache, tmp_path) -> Path:
    _ok(_featx("sweep", hog_cache, *SWEEP, "--out", tmp_path / "exp"))
    return tmp_path / "exp"


# --- TensorFlow's start-up lines --------------------------------------------------------------------

@pytest.mark.tensorflow_only
def test_a_command_that_loads_tensorflow_prints_no_start_up_lines_unless_verbose(tmp_path):
    photos = make_kaggle_images(tmp_path / "photos", 2)
    command = ["cache", photos, "--extractor", "efficientnet_lite0", "--opt", "weights=none", "--runtime",
               "keras", "--workers", "1"]
    quiet = _ok(_featx(*command, "--cache-dir", tmp_path / "quiet"))
    assert not TF_LINES.search(quiet.stdout + quiet.stderr), quiet.stderr
    assert quiet.stdout.splitlines() == [quiet.stdout.strip()] and " 4 rows (4 computed, 0 failed)" in quiet.stdout
    verbose = _ok(_featx("--verbose", *command, "--cache-dir", tmp_path / "verbose"))
    assert TF_LINES.search(verbose.stderr), verbose.stderr  # what --verbose is for
    assert not TF_LINES.search(verbose.stdout)
    # A level the user set is theirs: 0 shows everything, like --verbose.
    mine = _ok(_featx(*command, "--cache-dir", tmp_path / "mine", TF_CPP_MIN_LOG_LEVEL="0"))
    assert TF_LINES.search(mine.stderr), mine.stderr


def test_the_filter_drops_records_below_the_level_with_their_continuation_lines_and_keeps_the_rest():
    preamble = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    info = (b"I0000 00:00:1796592391.195975   13497 port.cc:153] oneDNN custom operations are on. You may see "
            b"slightly different numerical results.\n")
    guard = (b"I0000 00:00:1796592391.290684   13497 cpu_feature_guard.cc:227] This TensorFlow binary is "
             b"optimized to use available CPU instructions in performance-critical operations.\n"
             b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.\n")
    error = b"E0000 00:00:1796592391.3   13497 cuda_dnn.cc:8310] Unable to register cuDNN factory\n"
    warning = b"/x/keras/layer.py:12: UserWarning: Do not pass an `input_shape`\n"
    data = preamble + info + guard + warning + error + b"F0000 00:00:1.0 1 x.cc:1] fatal\n"
    assert filter_log_lines(data, 2) == warning + error + b"F0000 00:00:1.0 1 x.cc:1] fatal\n"
    assert filter_log_lines(data, 3) == warning + b"F0000 00:00:1.0 1 x.cc:1] fatal\n"
    assert filter_log_lines(data, 0) == data


# --- progress ---------------------------------------------------------------------------------------

def test_the_sweep_counts_configs_per_second_in_a_log_and_on_a_terminal(hog_cache, tmp_path):
    logged = _ok(_featx("sweep", hog_cache, *SWEEP, "--out", tmp_path / "a", FEATX_PROGRESS_SECONDS=0))
    lines = [line for line in logged.stderr.splitlines() if line.startswith("sweep: ")]
    assert lines and all(" configs/s, eta " in line for line in lines), logged.stderr
    assert "img/s" not in logged.stderr and lines[-1].split(": ", 2)[-1].startswith("4/4 (100%)")
    assert len(lines) == len(set(lines)), "the closing line repeats the last one"

    # On a terminal, Rich's bar (stderr is a pseudo-terminal here).
    controller, terminal = pty.openpty()
    shown = bytearray()

    def read() -> None:
        while True:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:
                    return
                if not chunk:
                    return
                shown.extend(chunk)
            elif done.is_set():
                return

    done = threading.Event()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        run = subprocess.run([FEATX, "sweep", str(hog_cache), *SWEEP, "--out", str(tmp_path / "b")],
                             stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=300,
                             env=_user_env(COLUMNS=160, TERM="xterm"))
    finally:
        os.close(terminal)
        done.set()
        reader.join(10)
        os.close(controller)
    text = shown.decode(errors="replace")
    assert run.returncode == 0, text
    assert "configs/s" in text and "img/s" not in text, text


def test_no_progress_line_for_work_with_nothing_to_do(experiment, tmp_path):
    photos = make_kaggle_images(tmp_path / "score", 3)
    cache_dir = tmp_path / "scored-cache"
    first = _ok(_featx("evaluate", experiment, photos, "--n-boot", 20, "--cache-dir", cache_dir))
    assert re.search(r"^hog features: 6/6 \(100%\)", first.stderr, re.M), first.stderr
    # Another manifest of the same images (no labels): every row is taken from the first file.
    again = _ok(_featx("predict", experiment, photos, "--layout", "unlabeled", "-o", tmp_path / "s.csv",
                       "--cache-dir", cache_dir))
    assert not re.search("^hog features:", again.stderr, re.M) and "0/0" not in again.stderr, again.stderr
    failed = _featx("index", tmp_path / "nowhere", "-o", tmp_path / "m.csv")
    assert _one_error_line(failed) == f"error: {tmp_path / 'nowhere'} does not exist; give the folder that holds " \
                                      f"the images"


# --- lock files -------------------------------------------------------------------------------------

def test_no_lock_file_is_left_beside_caches_experiments_or_stage_folders(experiment, hog_cache, tmp_path):
    photos = make_kaggle_images(tmp_path / "more", 6)
    runs = [_featx("cache", photos, "--extractor", "hog", "--opt", "size=32", "--cache-dir", tmp_path / "cache"),
            _featx("predict", experiment, photos, "-o", tmp_path / "s.csv", "--cache-dir", tmp_path / "cache"),
            _featx("report", experiment)]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.lock*")) == []
    for run in map(_ok, runs):  # and each summary is one line on stdout, progress and notes on stderr
        assert len(run.stdout.strip().splitlines()) == 1, run.stdout


LOCKER = """
import sys
from pathlib import Path
from featx.storage import BusyError, locked
target, counter, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
done = 0
while done < rounds:
    try:
        with locked(target):
            value = int(counter.read_text())
            counter.write_text(str(value + 1))
            done += 1
    except BusyError:
        pass
"""


def test_locks_exclude_each_other_although_each_holder_removes_its_lock_file(tmp_path):
    """Four processes take and drop the same lock 150 times each, every time deleting the lock file:
    no two ever hold it together (the counter loses no increment)."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    workers = [subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path / "exp"), str(counter), "150"])
               for _ in range(4)]
    assert [worker.wait(timeout=300) for worker in workers] == [0, 0, 0, 0]
    assert int(counter.read_text()) == 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter"]


# --- what indexing decided, for every command that indexes a folder ---------------------------------

def test_cache_predict_and_evaluate_print_the_layout_and_warnings_as_index_does(experiment, tmp_path):
    photos = make_kaggle_images(tmp_path / "mixed", 3)
    make_image(photos / "holiday.png", "cat", 7)  # no label in a Kaggle folder: skipped, with a warning
    indexed = _ok(_featx("index", photos, "--layout", "kaggle", "-o", tmp_path / "m.csv"))
    decided = [line for line in indexed.stderr.splitlines() if line.startswith(("layout: ", "warning: "))]
    assert decided[0].startswith("layout: kaggle") and "holiday.png" in decided[0]
    assert any(line.startswith("warning: ") for line in decided), indexed.stderr
    for command in (["cache", photos, "--extractor", "hog", "--opt", "size=32", "--cache-dir", tmp_path / "c"],
                    ["predict", experiment, photos, "-o", tmp_path / "s.csv", "--cache-dir", tmp_path / "c"],
                    ["evaluate", experiment, photos, "--n-boot", 20, "--cache-dir", tmp_path / "c"]):
        run = _ok(_featx(*command, "--layout", "kaggle"))
        assert [line for line in run.stderr.splitlines() if line.startswith(("layout: ", "warning: "))] \
            == decided, (command[0], run.stderr)


# --- numeric options --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["cache", "{photos}", "--extractor", "hog", "--batch-size", "0"], "--batch-size"),
    (["cache", "{photos}", "--extractor", "hog", "--workers", "0"], "--workers"),
    (["cache", "{photos}", "--extractor", "hog", "--val", "1.5"], "--val"),
    (["index", "{photos}", "--seed", "-1"], "--seed"),
    (["sweep", "x.h5", "--n-jobs", "0"], "--n-jobs"),
    (["predict", "x.joblib", "{photos}", "--batch-size", "0"], "--batch-size"),
    (["finetune", "exp", "--lr", "0"], "--lr"),
    (["scratch", "{photos}", "--epochs", "0"], "--epochs"),
])
def test_a_numeric_option_out_of_range_is_one_line_and_nothing_runs(args, option, tmp_path):
    photos = make_kaggle_images(tmp_path / "photos", 2)
    line = _one_error_line(_featx(*[a.format(photos=photos) for a in args], cwd=tmp_path))
    assert f"'{option}'" in line and f"(see featx {args[0]} --help)" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no cache/, no manifest, no experiment


# --- Ctrl-C and the resumed summary -----------------------------------------------------------------

def test_ctrl_c_prints_one_line_and_the_rerun_accounts_for_every_row(tmp_path):
    photos = make_kaggle_images(tmp_path / "photos", 120)
    command = [FEATX, "cache", str(photos), "--extractor", "hog", "--opt", "size=64", "--cache-dir",
               str(tmp_path / "c"), "--workers", "1", "--shard-rows", "4"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_user_env(FEATX_PROGRESS_SECONDS=0))
    seen = []
    while not (seen and re.match(r"hog features: [1-9]\d*/240", seen[-1])):
        seen.append(run.stderr.readline())
        assert seen[-1], "".join(seen)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130 and out == "", "".join(seen) + err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("hog features: ")]
    assert lines == ["interrupted: the shards computed so far are kept in the cache's journal (.partial); run the "
                     "same command again to compute only the rest"], err
    rerun = _ok(subprocess.run(command, capture_output=True, text=True, env=_user_env(), timeout=300))
    counts = re.fullmatch(r".*\.h5: 240 rows \((\d+) computed, (\d+) resumed from an interrupted run, 0 failed\) "
                          r"at [\d.]+ img/s", rerun.stdout.strip())
    assert counts, rerun.stdout
    computed, resumed = map(int, counts.groups())
    assert resumed >= 4 and computed + resumed == 240


# --- errors that advise what can be done ------------------------------------------------------------

def test_errors_point_at_what_exists(hog_cache, experiment, tmp_path):
    folder = hog_cache.parent
    line = _one_error_line(_featx("sweep", folder, *SWEEP, "--out", tmp_path / "x"))
    assert line == f"error: {folder} is a folder, not a cache file; give the cache file(s) in it: {hog_cache}"
    line = _one_error_line(_featx("predict", hog_cache, tmp_path / "photos", "-o", tmp_path / "s.csv"))
    assert line == (f"error: {hog_cache} is a feature cache (featx cache), not a model; give best.joblib from featx "
                    f"sweep (or its experiment folder), or the finetune/ folder from featx finetune")
    unlabeled = _ok(_featx("cache", tmp_path / "photos", "--extractor", "hog", "--opt", "size=32", "--layout",
                           "unlabeled", "--cache-dir", tmp_path / "u")).stdout.split(":")[0]
    line = _one_error_line(_featx("sweep", unlabeled, *SWEEP, "--out", tmp_path / "x"))
    assert "holds no labelled train, val or test rows" in line and "--val" not in line and "--test" not in line
    assert not (tmp_path / "x").exists()


# --- help -----------------------------------------------------------------------------

COMMANDS = ("index", "extractors", "cache", "inspect", "sweep", "report", "imagenet", "demo", "predict",
            "evaluate", "export", "finetune", "scratch")


def test_help_is_readable_at_80_columns_with_every_option_name_whole():
    from featx.cli import app
    from typer.main import get_command

    group = get_command(app)
    for name in ("", *COMMANDS):
        run = _ok(_featx(*([name] if name else []), "--help", COLUMNS=80))
        assert not [line for line in run.stdout.splitlines() if len(line) > 80], run.stdout
        assert "…" not in run.stdout and "[bold]" not in run.stdout, run.stdout
        command = group.get_command(None, name) if name else group
        names = [opt for param in command.params for opt in (*param.opts, *param.secondary_opts)
                 if opt.startswith("--")]
        assert all(re.search(rf"(^|[\s,/]){re.escape(opt)}([\s,/=]|$)", run.stdout, re.M) for opt in names), \
            (name, names, run.stdout)
    # The command list shows each command's whole first sentence.
    listed = _featx("--help", COLUMNS=80).stdout
    assert "..." not in listed.split("Commands:")[1]
