"""Crash-safe files and folders; every stage writes through this module and nothing else.

:func:`atomic_write` (and its ``_text`` / ``_json`` / ``_csv`` / ``_npz`` forms) writes a temporary file
beside the target, fsyncs it and ``os.replace``-s it over the target: a reader sees the old file or
the new one, never half of one. One writer at a time: :func:`locked`; a whole folder: :func:`stage_folder`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

__all__ = ["BusyError", "atomic_write", "atomic_write_text", "atomic_write_json", "atomic_write_csv", "atomic_save_npz",
           "temp_path", "fsync_dir", "locked", "stage_folder", "clean_stale_temps"]

TMP_MARK = ".tmp-"


class BusyError(RuntimeError):
    """Another process holds the lock on a target. A user-level condition: wait, or write elsewhere."""


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (after a rename) where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(target: str | os.PathLike, suffix: str = "") -> Path:
    """A hidden sibling of ``target`` unique to this process: ``.NAME.tmp-PID[suffix]``.

    ``suffix`` keeps a file extension that a writer insists on (Keras wants ``.weights.h5``).
    """
    target = Path(target)
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def clean_stale_temps(target: str | os.PathLike) -> None:
    """Remove temporaries that a killed writer of ``target`` left behind."""
    target = Path(target)
    for path in list(target.parent.glob(f".{target.name}{TMP_MARK}*")):
        _remove(path)


def atomic_write(target: str | os.PathLike, write: Callable[[Path], Any], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` and move the result over ``target`` atomically.

    ``write`` receives a path to create (a file, or a folder for writers that make one). On any
    exception the temporary is removed and the old ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target, suffix)
    try:
        write(tmp)
        if tmp.is_file():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(target: str | os.PathLike, rows: Iterable[Sequence], preamble: str = "") -> Path:
    """CSV ``rows`` (header first) with ``\n`` line ends, after an optional ``preamble``, written atomically."""
    buffer = io.StringIO()
    buffer.write(preamble)
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return atomic_write_text(target, buffer.getvalue())


def atomic_save_npz(target: str | os.PathLike, **arrays) -> Path:
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(target, write)


def _holder_path(target: Path) -> Path:
    return target.with_name(f"{target.name}.lock.json")


def _describe_holder(target: Path) -> str:
    try:
        info = json.loads(_holder_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another featx process"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"({info.get('command', '?')}, since {info.get('since', '?')})")


@contextlib.contextmanager
def locked(target: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Hold the writer's lock on ``target`` (``target.lock`` beside it) for the ``with`` block.

    Non-blocking: when another process holds it, raise :class:`BusyError` with one line naming the
    holder (pid, host, command, start time) and the fix. ``what`` names the thing in that line.
    """
    from filelock import FileLock, Timeout

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.with_name(f"{target.name}.lock")), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BusyError(f"{what or target} is being written by {_describe_holder(target)}; "
                        f"wait for it to finish, or write somewhere else") from None
    holder = _holder_path(target)
    try:
        atomic_write_json(holder, {
            "pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        yield target
    finally:
        with contextlib.suppress(OSError):
            holder.unlink()
        lock.release()


@contextlib.contextmanager
def stage_folder(target: str | os.PathLike, keep: tuple[str, ...] = (), what: str | None = None) -> Iterator[Path]:
    """Build a folder beside ``target`` and publish it over ``target`` with an atomic rename.

    Yields the temporary folder to fill. Entries named in ``keep`` (sub-folders or files that later
    stages own, such as ``finetune/``) are carried from the old folder into the new one *after* the
    block succeeds, by rename, just before the publish; until then they never move, so an exception
    or Ctrl-C inside the block cannot lose them. On failure only the temporary folder is removed.
    The whole build runs under :func:`locked` on ``target``.
    """
    target = Path(target)
    with locked(target, what):
        clean_stale_temps(target)
        tmp = temp_path(target)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            old = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}-old")
            if target.exists():
                for name in keep:
                    if (target / name).exists() and not (tmp / name).exists():
                        os.replace(target / name, tmp / name)
                os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                if old.exists() and not target.exists():
                    os.replace(old, target)
                raise
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            if tmp.exists() and target.exists():
                # Put kept entries back if they were already carried over.
                for name in keep:
                    if (tmp / name).exists() and not (target / name).exists():
                        with contextlib.suppress(OSError):
                            os.replace(tmp / name, target / name)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
