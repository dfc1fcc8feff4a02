"""The HDF5 feature store: one file per (dataset and split, extractor spec), built through a crash-safe journal.

File names, the layout (readable with plain h5py), row reuse from older files and crash safety are in
README.md, "The cache (HDF5)". ``FEATX_KILL_AT`` names a step at which a build SIGKILLs itself, for
crash tests (:func:`featx.storage.kill_point`). A full disk ends a build with one line
(:class:`CacheDiskFullError`) that names the space it needs; the journal stays for the rerun.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featx import __version__
from featx.data import Manifest
from featx.errors import UserError
from featx.storage import (BusyError, atomic_save_npz, atomic_write, atomic_write_text, clean_stale_temps, is_disk_full,
                           kill_point, locked)

__all__ = ["CacheError", "CacheLockedError", "CacheDiskFullError", "CacheBuilder", "FeatureCache", "open_cache",
           "cache_path", "cache_key", "state_sha256", "kill_point", "DTYPES"]

CACHE_FORMAT = 1
DTYPES = ("float32", "float16")


class CacheError(UserError, RuntimeError):
    """A cache cannot be written or read as asked; the message says why and what to do."""


class CacheLockedError(CacheError, BusyError):
    """Another process is writing the same cache (also a :class:`featx.storage.BusyError`)."""


class CacheDiskFullError(CacheError):
    """The cache folder's file system is full; the message names the folder and the space the build needs."""


def cache_key(spec: dict, dtype: str = "float32") -> str:
    """Short hash of everything that determines a cache's numbers."""
    blob = json.dumps({"spec": spec, "dtype": dtype, "format": CACHE_FORMAT},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def state_sha256(state: dict[str, np.ndarray]) -> str:
    """sha256 of an extractor's learned arrays (names, dtypes, shapes and bytes).

    Examples
    --------
    >>> import numpy as np
    >>> a = state_sha256({"vocabulary": np.zeros((2, 3), np.float32)})
    >>> a == state_sha256({"vocabulary": np.zeros((3, 2), np.float32)})
    False
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        array = np.ascontiguousarray(state[key])
        digest.update(f"{key}\x00{array.dtype.str}\x00{array.shape}\x00".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def cache_path(cache_dir: str | os.PathLike, manifest: Manifest, spec: dict, dtype: str = "float32") -> Path:
    """Where the cache of ``manifest`` under ``spec`` lives in ``cache_dir``:
    ``<dataset>-<extractor>-<hash>-<Manifest.fingerprint()>.h5``."""
    extractor = spec["name"].replace(":", "_").replace("/", "_")
    return Path(cache_dir) / f"{manifest.name}-{extractor}-{cache_key(spec, dtype)}-{manifest.fingerprint()}.h5"


def _size(n_bytes: float, up: bool = False) -> str:
    """``n_bytes`` in kB or MB, one decimal; ``up``: rounded up (a space needed is never understated)."""
    unit, name = (1e3, "kB") if n_bytes < 1e6 else (1e6, "MB")
    tenths = n_bytes / unit * 10
    return f"{(math.ceil(tenths) if up else round(tenths)) / 10:.1f} {name}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Shard:
    """Rows ``start:stop`` of a plan, once computed."""

    index: int
    start: int
    stop: int


@dataclass
class CachePlan:
    """What a journal is working towards (stored as ``plan.json``)."""

    key: str
    manifest_sha256: str
    n_rows: int  # rows to compute (images not reused from an older file)
    shard_rows: int
    reuse_from: str | None = None  # sha256 of the older file rows are reused from
    extra: dict = field(default_factory=dict)

    def shards(self) -> list[Shard]:
        return [Shard(i, start, min(start + self.shard_rows, self.n_rows))
                for i, start in enumerate(range(0, self.n_rows, self.shard_rows))]


class CacheBuilder:
    """Writes one cache file through a crash-safe journal.

    Use as a context manager (it holds the writer's lock)::

        with CacheBuilder(path, manifest, spec) as builder:
            if not builder.is_complete():
                builder.prepare(shard_rows=256)
                for shard in builder.pending_shards():
                    builder.write_shard(shard, features, ok, reasons)
                builder.publish()

    ``path`` is the final ``.h5`` file, ``manifest`` the images in the order rows are stored, ``spec``
    the extractor's ``Extractor.spec()`` and ``dtype`` (float32 or float16) how features are stored.
    ``fit_key`` says what a learned extractor's state comes from (``featx.pipeline``: a hash of the
    train rows it is fit on, or of a state given from elsewhere); rows and state of an older file that
    holds a state are reused only when its ``fit_key`` is the same (a SIFT vocabulary fit on another
    split's or seed's train rows never is). None: the extractor learns nothing.
    """

    def __init__(self, path: str | os.PathLike, manifest: Manifest, spec: dict, dtype: str = "float32",
                 fit_key: str | None = None):
        if dtype not in DTYPES:
            raise CacheError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self.path = Path(path)
        self.manifest = manifest
        self.spec = spec
        self.dtype = dtype
        self.key = cache_key(spec, dtype)
        self.fit_key = fit_key or None
        self.journal = self.path.with_name(self.path.name + ".partial")
        self._lock: contextlib.ExitStack | None = None
        self.plan: CachePlan | None = None
        self._reuse: dict[str, int] = {}  # path -> row in the older file
        self._reuse_path: Path | None = None  # the older file rows are reused from
        self.todo_records = list(manifest.records)
        self.n_reused = 0
        self._started_journal = False  # by this builder, in prepare()

    def __enter__(self) -> "CacheBuilder":
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(locked(self.path, what=str(self.path)))
        except BusyError as exc:
            raise CacheLockedError(f"{exc} (another featx process; or give another --cache-dir)") from None
        self._lock = stack
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        # A build that failed before any work (a weights file that does not load, say) leaves no journal.
        if exc_type is not None and self._started_journal and not any(self.journal.glob("*.npz")):
            shutil.rmtree(self.journal, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _require_lock(self) -> None:
        if self._lock is None:
            raise CacheError("CacheBuilder must be used inside a `with` block (it holds the writer's lock)")

    def is_complete(self) -> bool:
        """True when the final file exists, is readable and matches this manifest and spec.

        A journal left beside a complete file (a run killed just after its publish) is removed.
        """
        if not self.path.exists():
            return False
        try:
            with h5py.File(self.path, "r") as h5:
                complete = (h5.attrs.get("cache_key") == self.key
                            and h5.attrs.get("manifest_sha256") == self.manifest.sha256())
        except OSError:
            return False
        if complete and self._lock is not None and self.journal.exists():
            shutil.rmtree(self.journal, ignore_errors=True)
        return complete

    def prepare(self, shard_rows: int = 256) -> CachePlan:
        """Start or resume the journal; returns the plan."""
        self._require_lock()
        clean_stale_temps(self.path)  # an interrupted publish
        self._plan_reuse()
        plan = CachePlan(key=self.key, manifest_sha256=self.manifest.sha256(),
                         n_rows=len(self.todo_records), shard_rows=int(shard_rows),
                         reuse_from=self._reuse_sha, extra={"fit_key": self.fit_key})
        plan_file = self.journal / "plan.json"
        if plan_file.exists():
            try:
                old = CachePlan(**json.loads(plan_file.read_text()))
            except (ValueError, TypeError):
                old = None
            # A journal started for other fit rows holds another state (and rows computed with it).
            if old is not None and (old.key, old.manifest_sha256, old.n_rows, old.reuse_from,
                                    old.extra.get("fit_key")) == (plan.key, plan.manifest_sha256, plan.n_rows,
                                                                  plan.reuse_from, self.fit_key):
                self.plan = old  # resume with the shard size the journal was started with
                return old
            shutil.rmtree(self.journal)  # a different job: start over
        with self._disk_full_is_one_line():
            self.journal.mkdir(parents=True, exist_ok=True)
            self._started_journal = True
            atomic_write_text(plan_file, json.dumps(plan.__dict__))
        self.plan = plan
        return plan

    def reuse_candidates(self) -> list[Path]:
        """Files in the cache folder that may hold rows for this build: this file, then siblings
        with the same spec hash (older file names included), newest first."""
        siblings = [p for p in self.path.parent.glob(f"*-{self.key}*.h5")
                    if p != self.path and not p.name.startswith(".")
                    and (p.stem.endswith(f"-{self.key}") or f"-{self.key}-" in p.name)]
        siblings.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return ([self.path] if self.path.exists() else []) + siblings

    def _reusable_rows(self, candidate: Path) -> dict[str, int]:
        """Rows of ``candidate`` this build may take: same spec, same root, a learned state (if it has
        one) learned from the same rows (``fit_key``), and per row the same path and sha1 as the
        manifest's record (a missing sha1 never matches)."""
        try:
            with h5py.File(candidate, "r") as h5:
                if (h5.attrs.get("cache_key") != self.key
                        or str(h5.attrs.get("root", "")) != str(self.manifest.root)):
                    return {}
                if len(h5.get("state", ())) and (self.fit_key is None
                                                 or str(h5.attrs.get("fit_key", "")) != self.fit_key):
                    return {}  # its rows were computed with a state learned from other rows
                old_paths, old_sha1 = h5["paths"].asstr()[:], h5["sha1"].asstr()[:]
        except (OSError, KeyError, TypeError):
            return {}
        old = {(p, s): i for i, (p, s) in enumerate(zip(old_paths, old_sha1))}
        return {r.path: old[r.path, r.sha1] for r in self.manifest.records if r.sha1 and (r.path, r.sha1) in old}

    def _plan_reuse(self) -> None:
        """Pick the candidate file with the most checked reusable rows."""
        self._reuse, self._reuse_sha, self._reuse_path = {}, None, None
        for candidate in self.reuse_candidates():
            rows = self._reusable_rows(candidate)
            if len(rows) > len(self._reuse):
                self._reuse, self._reuse_path = rows, candidate
        if self._reuse:
            from featx.weights import sha256_file

            self._reuse_sha = sha256_file(self._reuse_path)
            self.todo_records = [r for r in self.manifest.records if r.path not in self._reuse]
            self.n_reused = len(self._reuse)

    def shard_path(self, shard: Shard) -> Path:
        return self.journal / f"shard-{shard.index:06d}.npz"

    def pending_shards(self) -> list[Shard]:
        """Shards not yet in the journal."""
        assert self.plan is not None, "call prepare() first"
        return [s for s in self.plan.shards() if not self.shard_path(s).exists()]

    def records_of(self, shard: Shard):
        return self.todo_records[shard.start:shard.stop]

    def write_shard(self, shard: Shard, features: np.ndarray, ok: np.ndarray, reasons: list[str]) -> None:
        """Store one computed shard atomically.

        ``features`` has one row per readable image of the shard (``ok.sum()`` rows);
        ``reasons`` one string per unreadable image, in order.
        """
        self._require_lock()
        ok = np.asarray(ok, dtype=bool)
        if ok.shape != (shard.stop - shard.start,):
            raise CacheError(f"shard {shard.index}: ok mask has {ok.shape[0]} entries, expected {shard.stop - shard.start}")
        if len(features) != int(ok.sum()) or len(reasons) != int((~ok).sum()):
            raise CacheError(f"shard {shard.index}: {len(features)} feature rows and {len(reasons)} "
                             f"failure reasons do not match the ok mask ({int(ok.sum())} ok)")
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2:
            features = features.reshape(len(features), -1)
        if not np.all(np.isfinite(features)):
            raise CacheError(f"shard {shard.index}: the extractor produced NaN or infinite features")
        with self._disk_full_is_one_line(features.shape[1] if len(features) else None):
            atomic_save_npz(self.shard_path(shard), features=features.astype(self.dtype), ok=ok,
                            reasons=np.array(reasons, dtype=object).astype(str) if reasons else np.zeros(0, "U1"))
        kill_point(f"shard:{shard.index}")

    def load_state(self) -> dict[str, np.ndarray] | None:
        """Extractor state saved in the journal, or in the older file rows are reused from (only ever one
        whose state was learned from the same rows: see ``fit_key``)."""
        state_file = self.journal / "state.npz"
        if state_file.exists():
            with np.load(state_file) as data:
                return {k: data[k] for k in data.files}
        if self._reuse:
            with h5py.File(self._reuse_path, "r") as h5:
                if "state" in h5:
                    return {k: h5["state"][k][()] for k in h5["state"]}
        return None

    def save_state(self, state: dict[str, np.ndarray]) -> None:
        self._require_lock()
        kill_point("fit")  # the extractor is fit, its state not yet stored
        with self._disk_full_is_one_line():
            self.journal.mkdir(parents=True, exist_ok=True)
            atomic_save_npz(self.journal / "state.npz", **state)
        kill_point("save_state")

    def publish(self, attrs: dict | None = None) -> Path:
        """Assemble shards (and reused rows) into the final file, atomically."""
        self._require_lock()
        assert self.plan is not None, "call prepare() first"
        missing = self.pending_shards()
        if missing:
            raise CacheError(f"{len(missing)} shard(s) are still missing; cannot publish {self.path}")
        # Row order: the manifest's order; each row from a shard or from the older file.
        computed: dict[str, tuple[int, int]] = {}  # path -> (shard index, row within shard's ok rows)
        failed: list[tuple[str, str]] = []
        dim = None
        for shard in self.plan.shards():
            with np.load(self.shard_path(shard)) as data:
                ok, reasons, n_feat = data["ok"], list(data["reasons"]), data["features"].shape
            if n_feat[0]:
                dim = n_feat[1]
            paths = np.array([record.path for record in self.records_of(shard)], dtype=object)
            computed.update({path: (shard.index, row) for row, path in enumerate(paths[ok])})
            failed.extend(zip(paths[~ok], map(str, reasons)))
        old = h5py.File(self._reuse_path, "r") if self._reuse else None
        try:
            if dim is None and old is not None:
                dim = old["features"].shape[1]
            rows = [r for r in self.manifest.records if r.path in computed or r.path in self._reuse]
            if not rows:
                raise CacheError(f"no image could be read ({len(failed)} failed, first: "
                                 f"{failed[0][0] if failed else '-'}: {failed[0][1] if failed else '-'}); "
                                 f"nothing to cache")

            def write(tmp: Path) -> None:
                self._write_file(tmp, dim, rows, computed, failed, old, attrs)
                kill_point("publish:before_rename")

            # Reading ``old`` while its replacement is renamed over it is safe on POSIX (the open
            # handle keeps the old inode); the rename is storage's atomic one.
            # Checked first: HDF5 fails on a full disk with a RuntimeError at close, and may crash later.
            # (A file system that reports no size at all is not refused.)
            usage = shutil.disk_usage(self.path.parent)
            if usage.total > 0 and usage.free < self.space_needed(dim)[1]:
                raise CacheDiskFullError(self._disk_full_line(dim))
            with self._disk_full_is_one_line(dim):
                atomic_write(self.path, write)
        finally:
            if old is not None:
                old.close()
        kill_point("publish:after_rename")
        shutil.rmtree(self.journal, ignore_errors=True)
        return self.path

    def _write_file(self, tmp, dim, rows, computed, failed, old, attrs) -> None:
        manifest, n = self.manifest, len(rows)
        chunk_rows = self._chunk_rows(n, dim)
        text = h5py.string_dtype("utf-8")
        with h5py.File(tmp, "w") as h5:
            features = h5.create_dataset("features", shape=(n, dim), dtype=self.dtype, chunks=(chunk_rows, dim))
            self._copy_rows(features, rows, computed, old)
            h5.create_dataset("paths", data=[r.path for r in rows], dtype=text)
            label_index = {name: i for i, name in enumerate(manifest.label_names)}  # -1: unlabeled
            h5.create_dataset("labels", data=np.array([label_index.get(r.label, -1) for r in rows], dtype=np.int32))
            h5.create_dataset("split", data=[r.split for r in rows], dtype=text)
            h5.create_dataset("sha1", data=[r.sha1 for r in rows], dtype=text)
            h5.create_dataset("failed", data=np.array(failed, dtype=object).reshape(-1, 2), dtype=text)
            state = self.load_state() or {}
            group = h5.create_group("state")
            for key, value in state.items():
                group.create_dataset(key, data=value)
            created = old.attrs.get("created") if old is not None else None
            h5.attrs.update({
                "featx_version": __version__, "format": CACHE_FORMAT, "cache_key": self.key,
                "dataset": manifest.name, "root": str(manifest.root), "layout": manifest.layout,
                "seed": manifest.seed, "extractor": self.spec["name"],
                "extractor_spec": json.dumps(self.spec, sort_keys=True),
                "weights_sha256": self.spec.get("weights_sha256") or "",
                "preprocessing": json.dumps(self.spec.get("preprocessing", {}), sort_keys=True),
                "dtype": self.dtype, "label_names": json.dumps(manifest.label_names),
                "manifest_sha256": manifest.sha256(), "rows_done": n, "rows_failed": len(failed),
                "rows_reused": len([r for r in rows if r.path not in computed]),
                "fit_key": self.fit_key or "",
                "created": created or _now(), "updated": _now(), **(attrs or {}),
            })

    def space_needed(self, dim: int) -> tuple[int, int]:
        """Bytes of the whole journal and of the final file, for rows of ``dim`` features (an upper estimate).

        A build needs both at once: the journal is removed only after the final file is in place.
        """
        assert self.plan is not None, "call prepare() first"
        row_bytes = dim * np.dtype(self.dtype).itemsize
        page = 4096  # file systems allocate whole blocks
        state = self.journal / "state.npz"
        state_bytes = state.stat().st_size if state.exists() else 0
        journal = 2 * page + state_bytes + sum(
            -(-((shard.stop - shard.start) * (row_bytes + 1) + 2048) // page) * page for shard in self.plan.shards())
        n = len(self.manifest.records)
        chunk_rows = self._chunk_rows(n, dim)
        features = -(-n // chunk_rows) * chunk_rows * row_bytes  # HDF5 stores whole chunks
        text = sum(len(r.path.encode()) + len(r.sha1 or "") + len(r.split) + 3 * 16 + 8 for r in self.manifest.records)
        final = features + text + state_bytes + 64 * 1024
        return journal, final

    def _chunk_rows(self, n_rows: int, dim: int) -> int:
        """Rows per HDF5 chunk of ``features``: about 1 MiB."""
        return int(max(1, min(n_rows, (1 << 20) // max(1, dim * np.dtype(self.dtype).itemsize))))

    @contextlib.contextmanager
    def _disk_full_is_one_line(self, dim: int | None = None):
        """Turn a full disk into :class:`CacheDiskFullError`: the folder, the space the build needs at once
        (journal plus final file), what is free, and that a rerun goes on from the journal."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            if not is_disk_full(exc):
                raise
            raise CacheDiskFullError(self._disk_full_line(dim)) from exc

    def _disk_full_line(self, dim: int | None) -> str:
        folder, free = self.path.parent, 0
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(folder).free
        shards = sorted(self.journal.glob("shard-*.npz")) if self.journal.exists() else []
        if dim is None and shards:
            with contextlib.suppress(OSError, ValueError, KeyError), np.load(shards[0]) as data:
                dim = int(data["features"].shape[1]) or None
        written = sum(f.stat().st_size for f in self.journal.iterdir() if f.is_file()) if self.journal.exists() else 0
        line = f"no space left in {folder} for the cache {self.path.name}"
        if dim and self.plan is not None:
            journal, final = self.space_needed(dim)
            missing = journal + final - written - free
            line += (f": it needs {_size(journal + final, up=True)} there at once (journal {_size(journal, up=True)} + "
                     f"final file {_size(final, up=True)}; {_size(written)} of the journal written, {_size(free)} "
                     f"free); free {f'at least {_size(missing, up=True)} more' if missing > 0 else 'some space'} there")
        else:
            line += f" ({_size(free)} free); free some space there"
        line += ", then run the same command again"
        if shards or (self.journal / "state.npz").exists():
            n_shards = len(self.plan.shards()) if self.plan is not None else "?"
            line += (f": the journal {self.journal.name}/ is kept ({len(shards)} of {n_shards} shards done) and the "
                     f"rerun computes only what it lacks")
        return line

    def _copy_rows(self, target, rows, computed, old) -> None:
        """Fill ``target`` row by row in manifest order, one shard in memory at a time."""
        loaded_index, loaded = None, None
        block_start, block = 0, []
        for out_row, record in enumerate(rows, start=1):
            if record.path in computed:
                shard_index, row = computed[record.path]
                if shard_index != loaded_index:
                    shard = self.plan.shards()[shard_index]
                    with np.load(self.shard_path(shard)) as data:
                        loaded = data["features"]
                    loaded_index = shard_index
                block.append(loaded[row])
            else:
                block.append(old["features"][self._reuse[record.path]])
            if len(block) >= 512:
                target[block_start:out_row] = np.stack(block)
                block_start, block = out_row, []
        if block:
            target[block_start:] = np.stack(block)


def _folder_given(folder: Path) -> str:
    """The line for a folder given where a cache file belongs: the cache files inside it, by name."""
    found = sorted(p for p in folder.glob("*.h5") if not p.name.startswith("."))
    if not found:
        return (f"{folder} is a folder with no .h5 cache file in it; give a cache file: featx cache {folder} "
                f"--extractor NAME makes one from a folder of images and prints its path")
    names = ", ".join(str(p) for p in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return f"{folder} is a folder, not a cache file; give the cache file(s) in it: {names}"


class FeatureCache:
    """Read a cache file (:func:`open_cache`; a context manager)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = (" (an interrupted run left a journal beside it: run featx cache again to finish it)"
                    if partial.exists() else "; make it with featx cache DIR --extractor NAME")
            raise CacheError(f"{self.path} does not exist{hint}")
        # The advice depends on who wrote the file: a file featx did not write is never to be deleted.
        make = "give a .h5 file written by featx cache (make one with: featx cache DIR --extractor NAME)"
        if self.path.is_dir():
            raise CacheError(_folder_given(self.path))
        if not h5py.is_hdf5(self.path):
            raise CacheError(f"{self.path} is not a featx cache (not a readable HDF5 file); {make}")
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise CacheError(f"{self.path} is an HDF5 file that cannot be opened ({exc}); if featx cache wrote it, "
                             f"it is damaged: delete it and run featx cache again; otherwise {make}") from None
        if "cache_key" not in self.h5.attrs:
            self.h5.close()
            raise CacheError(f"{self.path} is an HDF5 file but not a featx cache (no cache_key attribute); {make}")
        missing = [name for name in ("features", "paths", "labels", "split") if name not in self.h5]
        if missing:
            self.h5.close()
            raise CacheError(f"{self.path} is a damaged featx cache (missing {', '.join(missing)}); delete it and "
                             f"run featx cache again")

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.h5.close()

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self.h5.attrs.items()}

    @property
    def spec(self) -> dict:
        return json.loads(self.h5.attrs["extractor_spec"])

    @property
    def label_names(self) -> list[str]:
        return json.loads(self.h5.attrs["label_names"])

    @property
    def features(self):
        """The h5py dataset (rows are read on demand)."""
        return self.h5["features"]

    @property
    def n_rows(self) -> int:
        return int(self.h5["features"].shape[0])

    @property
    def dim(self) -> int:
        return int(self.h5["features"].shape[1])

    @property
    def paths(self) -> list[str]:
        return self.h5["paths"].asstr()[:].tolist()

    @property
    def labels(self) -> np.ndarray:
        return self.h5["labels"][:]

    @property
    def split(self) -> np.ndarray:
        return self.h5["split"].asstr()[:].astype(str)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [tuple(row) for row in self.h5["failed"].asstr()[:].tolist()]

    @property
    def state(self) -> dict[str, np.ndarray]:
        return {k: self.h5["state"][k][()] for k in self.h5.get("state", {})}

    def load(self, split: str | None = None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Features and integer labels of a split (all rows when None), as in-memory arrays."""
        index = np.arange(self.n_rows) if split is None else np.flatnonzero(self.split == split)
        features = self.h5["features"]
        if len(index) == self.n_rows:
            X = features[:]
        else:
            X = features[index] if len(index) else np.zeros((0, self.dim), features.dtype)
        return X.astype(dtype, copy=False), self.labels[index]

    def summary(self) -> dict:
        """What ``featx inspect`` shows."""
        split, labels, names = self.split, self.labels, self.label_names
        counts = {}
        for s in sorted(set(split)):
            present, n_rows = np.unique(labels[split == s], return_counts=True)
            counts[s] = {(names[i] if i >= 0 else "-"): int(n) for i, n in zip(present, n_rows)}
        attrs = self.attrs
        return {
            "path": str(self.path), "rows": self.n_rows, "dim": self.dim,
            "dtype": str(self.features.dtype), "failed": len(self.h5["failed"]),
            "dataset": attrs.get("dataset"), "root": attrs.get("root"),
            "extractor": attrs.get("extractor"), "spec": self.spec,
            "splits": counts, "label_names": names,
            "state": {k: list(v.shape) for k, v in self.state.items()},
            "created": attrs.get("created"), "updated": attrs.get("updated"),
            "featx_version": attrs.get("featx_version"), "manifest_sha256": attrs.get("manifest_sha256"),
            "images_per_second": attrs.get("images_per_second"),
            "runtime": attrs.get("runtime"), "keras_backend": attrs.get("keras_backend") or None,
        }


def open_cache(path: str | os.PathLike) -> FeatureCache:
    """Open a finished cache for reading."""
    return FeatureCache(path)

