"""Keep TensorFlow's start-up lines out of the command line's output (``featx --verbose`` shows them).

Importing TensorFlow prints, whatever ``TF_CPP_MIN_LOG_LEVEL`` says, absl's ``WARNING: All log
messages before absl::InitializeLog() is called are written to STDERR`` and oneDNN's ``I0000 ...
port.cc:153] oneDNN custom operations are on ...`` (twice: two libraries each log before absl is set
up). They are written by C++ straight to file descriptor 2, so :func:`quiet_tensorflow` installs an
import hook that sends descriptor 2 to a temporary file while ``tensorflow`` is first imported and
then writes back every line but those below the log level: the lines are hidden, nothing about the
computation changes (oneDNN stays on). Anything else printed meanwhile (a Python warning, a crash
message) is written back. TensorFlow honours ``TF_CPP_MIN_LOG_LEVEL`` itself after its import.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import re
import sys
import tempfile

__all__ = ["LEVEL_VARIABLE", "quiet_tensorflow", "filter_log_lines"]

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"  # TensorFlow's: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR
DEFAULT_LEVEL = "2"
_CHILD_VARIABLE = "FEATX_QUIET_TF"  # set for worker processes (Dask, joblib): featx/__init__ installs the hook there
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# A log record's first line: absl's (severity, MMDD, time (seconds since the epoch before absl is set up),
# thread, file:line]) or TensorFlow's own (date time: severity file:line]).
_HEADER = re.compile(rb"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |"
                     rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )[^\]\s]+:\d+\] ")
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
# A line that starts something new, not the tail of a multi-line log record.
_NEW_RECORD = re.compile(rb"^(Traceback \(most recent call last\)|\S+:\d+: \w+(Warning|Error)\b)")


def quiet_tensorflow(verbose: bool = False) -> None:
    """Hide TensorFlow's log lines below ``TF_CPP_MIN_LOG_LEVEL``, its start-up lines included.

    A level the user set is kept; otherwise it becomes 2 (INFO and WARNING hidden), or 0 with
    ``verbose`` (everything shown). Call before TensorFlow is first imported; the processes this
    one starts (Dask and joblib workers) hide the same lines (:func:`quiet_tensorflow_in_worker`).
    """
    os.environ.setdefault(LEVEL_VARIABLE, "0" if verbose else DEFAULT_LEVEL)
    if _level() <= 0:
        os.environ.pop(_CHILD_VARIABLE, None)
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _QuietImport)]
        return
    os.environ[_CHILD_VARIABLE] = "1"
    if _level() >= 2:  # TensorFlow's Python side logs through the standard logging module
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    _install()


def quiet_tensorflow_in_worker() -> None:
    """In a process the command line started: the same import hook, when the command line asked for it."""
    if os.environ.get(_CHILD_VARIABLE) == "1":
        _install()


def _install() -> None:
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def _level() -> int:
    try:
        return int(os.environ.get(LEVEL_VARIABLE, "0"))
    except ValueError:
        return 0


def filter_log_lines(data: bytes, level: int) -> bytes:
    """``data`` without the absl/glog records below ``level`` (and absl's preamble when ``level`` >= 1).

    A record's continuation lines (cpu_feature_guard's ``To enable the following instructions ...``)
    go with it; FATAL records, Python warnings and tracebacks always stay.
    """
    kept, dropping = [], False
    for line in data.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            dropping = _SEVERITY[header.group(1) or header.group(2)] < min(level, 3)
        elif line.rstrip(b"\r\n") == _ABSL_PREAMBLE:
            dropping = level >= 1
        elif _NEW_RECORD.match(line) or not line.strip():
            dropping = False
        if not dropping:
            kept.append(line)
    return b"".join(kept)


@contextlib.contextmanager
def _filtered_stderr(level: int):
    """Descriptor 2 goes to a temporary file inside the block; its lines are written back filtered."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        capture = tempfile.TemporaryFile()
    except OSError:  # no room for a temporary file: the lines are shown rather than the import failing
        yield
        return
    with capture:
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 (a daemon): nothing to hide
            yield
            return
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = memoryview(filter_log_lines(capture.read(), level))
            with contextlib.suppress(OSError):
                while kept:
                    kept = kept[os.write(2, kept):]


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with descriptor 2 filtered."""

    def __init__(self, loader, finder: "_QuietImport"):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.finder)
        module.__loader__ = module.__spec__.loader = self.loader  # what TensorFlow and importlib see
        with _filtered_stderr(_level()):
            self.loader.exec_module(module)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and wraps its loader (removed once it has run)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader, self)
                return spec
        return None
