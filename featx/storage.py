"""Crash-safe files and folders; every stage writes through this module and nothing else.

:func:`atomic_write` (and its ``_text`` / ``_json`` / ``_csv`` / ``_npz`` forms) writes a temporary file
beside the target, fsyncs it and ``os.replace``-s it over the target: a reader sees the old file or
the new one, never half of one. One writer at a time: :func:`locked`; a whole folder: :func:`stage_folder`.
``FEATX_KILL_AT`` names a step at which a writer SIGKILLs itself, for crash tests (:func:`kill_point`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["BusyError", "atomic_write", "atomic_write_text", "atomic_write_json", "atomic_write_csv", "atomic_save_npz",
           "temp_path", "fsync_dir", "locked", "stage_folder", "check_not_busy", "clean_stale_temps", "kill_point",
           "is_disk_full"]

TMP_MARK = ".tmp-"
OLD_MARK = "-old"  # a stage folder set aside during its publish: ``.NAME.tmp-PID-old``


class BusyError(RuntimeError):
    """Another process holds the lock on a target. A user-level condition: wait, or write elsewhere."""


def kill_point(step: str) -> None:
    """SIGKILL this process when the environment variable ``FEATX_KILL_AT`` equals ``step``.

    Crash tests kill a writer at a named step instead of hoping a random moment lands there. Caches
    (:mod:`featx.cache`): ``fit``, ``save_state``, ``shard:N``, ``publish:before_rename``,
    ``publish:after_rename``. Stage folders (:func:`stage_folder`): ``stage:carried:NAME`` (kept entry
    NAME moved into the new folder), ``stage:set_aside`` (the old folder renamed aside, the new one not
    yet in place), ``stage:published`` (the new folder in place, the old one not yet removed).
    """
    if os.environ.get("FEATX_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def is_disk_full(exc: BaseException) -> bool:
    """True for an error that says the file system is full (or a quota is spent).

    h5py raises ``OSError`` with the errno, or at close a ``RuntimeError`` whose text carries HDF5's.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, (OSError, RuntimeError)) and any(
        mark in str(exc) for mark in ("No space left on device", "Disk quota exceeded",
                                      f"errno = {errno.ENOSPC},", f"errno = {errno.EDQUOT},"))


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


def _temps_of(target: Path) -> list[Path]:
    """What writers of ``target`` left beside it, newest first."""
    found = []
    for path in target.parent.glob(f".{target.name}{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            found.append((path.lstat().st_mtime, path))
    return [path for _, path in sorted(found, reverse=True)]


def _put_back(target: Path, keep: Iterable[str], temps: list[Path]) -> None:
    """Undo what an interrupted :func:`stage_folder` publish left half done: the old folder set aside
    while ``target`` is missing is renamed back, and entries named in ``keep`` that ``target`` lacks are
    moved back from the temporary folders that hold them. Nothing is deleted here."""
    if not os.path.lexists(target):
        for temp in temps:
            if temp.name.endswith(OLD_MARK) and temp.is_dir():
                os.replace(temp, target)
                break
    if not target.is_dir():
        return
    for temp in temps:
        for name in keep:
            if temp.is_dir() and os.path.lexists(temp / name) and not os.path.lexists(target / name):
                os.replace(temp / name, target / name)
    fsync_dir(target)
    fsync_dir(target.parent)


def clean_stale_temps(target: str | os.PathLike, keep: Iterable[str] = ()) -> None:
    """Remove temporaries that a killed writer of ``target`` left behind, after putting back what they hold.

    For a folder published by :func:`stage_folder`, a kill during its publish may have left the old
    folder set aside (``target`` missing) or kept entries (``keep``, e.g. ``finetune``) inside the new
    one that never got renamed into place: both go back into ``target`` first, so only temporaries
    that hold nothing of ``target``'s are removed. Call it only while holding ``target``'s lock.
    """
    target = Path(target)
    temps = _temps_of(target)
    if not temps:
        return
    _put_back(target, tuple(keep), temps)
    for path in temps:
        if os.path.lexists(path):
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


def _busy_line(what: str, target: Path) -> str:
    return f"{what} is being written by {_describe_holder(target)}; wait for it to finish, or write somewhere else"


def _recover_entry_of_stage_folder(target: Path) -> None:
    """``target`` may be an entry (``exp/finetune``) of a stage folder whose publish was killed: put it
    back where it belongs before anyone writes a new one, unless the folder's own writer is at work."""
    parent = target.parent
    temps = _temps_of(parent)
    if not temps:
        return
    with contextlib.suppress(BusyError):
        with locked(parent):
            _put_back(parent, (target.name,), _temps_of(parent))


def _lock_path(target: Path) -> Path:
    return target.with_name(f"{target.name}.lock")


def _take_lock_file(path: Path) -> int | None:
    """A descriptor of ``path`` holding an exclusive ``flock``, or None when another process holds it.

    Holders remove the file on release, while still holding it (:func:`_drop_lock_file`): a process
    that opened it just before may then lock a file that is no longer in the folder, while a third
    creates and locks a new one. So after locking, the path must still name the file locked; if not,
    try again with the file now there.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _drop_lock_file(path: Path, fd: int) -> None:
    """Remove the lock file, then release it: a lock file is never left beside the target."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def _lock_file(target: Path, what: str | None) -> Iterator[None]:
    """The exclusive, non-blocking lock ``target.lock``; :class:`BusyError` when another process holds it.

    Where ``fcntl`` is missing (Windows), filelock's lock, which removes its file there itself.
    """
    path = _lock_path(target)
    if fcntl is None:  # pragma: no cover - Windows
        from filelock import FileLock, Timeout

        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise BusyError(_busy_line(what or str(target), target)) from None
        try:
            yield
        finally:
            lock.release()
        return
    fd = _take_lock_file(path)
    if fd is None:
        raise BusyError(_busy_line(what or str(target), target))
    try:
        yield
    finally:
        _drop_lock_file(path, fd)


@contextlib.contextmanager
def locked(target: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Hold the writer's lock on ``target`` (``target.lock`` beside it) for the ``with`` block.

    Non-blocking: when another process holds it, raise :class:`BusyError` with one line naming the
    holder (pid, host, command, start time) and the fix. ``what`` names the thing in that line.
    The lock file exists only while held (a killed holder's is reused by the next writer and then
    removed). When ``target`` is an entry of a folder that :func:`stage_folder` was killed while
    publishing (``exp/finetune`` of a re-sweep of ``exp``), the entry is first put back in place.
    """
    target = Path(target)
    if target.parent != target:
        _recover_entry_of_stage_folder(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock_file(target, what):
        holder = _holder_path(target)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200],
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            # Only a description for the line others get: a full disk must not stop the writer here.
            with contextlib.suppress(OSError):
                atomic_write_json(holder, me)
            yield target
        finally:
            with contextlib.suppress(OSError, ValueError):
                # Only our own: a stage folder published meanwhile may hold a new writer's file at that path.
                if json.loads(holder.read_text(encoding="utf-8")).get("pid") == me["pid"]:
                    holder.unlink()


@contextlib.contextmanager
def _stage_locks(target: Path, keep: tuple[str, ...], what: str | None) -> Iterator[None]:
    """The lock on ``target``, then (after an interrupted publish is put back) on each kept entry of it:
    the lock that entry's own writer takes (``exp/finetune`` for ``featx finetune``)."""
    with locked(target, what), contextlib.ExitStack() as stack:
        clean_stale_temps(target, keep)
        if target.is_dir():
            for name in keep:
                entry = target / name
                try:
                    stack.enter_context(locked(entry))
                except BusyError:
                    raise BusyError(f"{target} cannot be replaced ({what or 'publish'}) while "
                                    f"{_busy_line(str(entry), entry)}") from None
        yield


def check_not_busy(target: str | os.PathLike, keep: tuple[str, ...] = (), what: str | None = None) -> None:
    """Raise the :class:`BusyError` that :func:`stage_folder` would raise now, before any work is done.

    A long job that publishes with :func:`stage_folder` at its end calls this first, so that a folder
    being written (``finetune/`` of a running ``featx finetune``) stops it at once, not after the work.
    """
    with _stage_locks(Path(target), tuple(keep), what):
        pass


@contextlib.contextmanager
def stage_folder(target: str | os.PathLike, keep: tuple[str, ...] = (), what: str | None = None) -> Iterator[Path]:
    """Build a folder beside ``target`` and publish it over ``target`` with an atomic rename.

    Yields the temporary folder to fill. Entries named in ``keep`` (sub-folders or files that later
    stages own, such as ``finetune/``) are carried from the old folder into the new one *after* the
    block succeeds, by rename, just before the publish; until then they never move, so an exception
    or Ctrl-C inside the block cannot lose them. On failure only the temporary folder is removed.

    The whole build runs under :func:`locked` on ``target`` and on each kept entry (the lock its own
    writer takes): a kept entry being written stops the publish with a :class:`BusyError` naming its
    writer, and its writer cannot start while the publish moves it. A kill (``kill -9``, power cut)
    at any point of the publish loses nothing: the next writer of ``target`` (or of a kept entry) finds
    the old folder set aside or kept entries in the new one, and puts them back (:func:`clean_stale_temps`).
    """
    target = Path(target)
    keep = tuple(keep)
    with _stage_locks(target, keep, what):
        tmp = temp_path(target)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _publish(target, tmp, keep)


def _publish(target: Path, tmp: Path, keep: tuple[str, ...]) -> None:
    """Carry ``keep`` from ``target`` into ``tmp``, set ``target`` aside, rename ``tmp`` over it.

    Killed between two renames, the kept entries sit in ``tmp`` and the old folder in ``.NAME.tmp-PID-old``:
    :func:`clean_stale_temps` puts both back. An exception puts them back at once.
    """
    old = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}{OLD_MARK}")
    carried: list[str] = []
    try:
        if target.exists():
            for name in keep:
                if os.path.lexists(target / name) and not os.path.lexists(tmp / name):
                    os.replace(target / name, tmp / name)
                    carried.append(name)
                    kill_point(f"stage:carried:{name}")
            os.replace(target, old)
            kill_point("stage:set_aside")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            _put_back(target, carried, [old, tmp])
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    kill_point("stage:published")
    shutil.rmtree(old, ignore_errors=True)
