"""Find images, read their labels, split them deterministically, and keep it all in a manifest.

The layouts (``kaggle``, ``folders``, ``unlabeled``, ``auto``), the split rule (a hash of the seed and
the file's content hash alone, so identical files share a split and adding images never moves one
already placed) and the manifest CSV are described in README.md, "Layouts" and "The manifest".
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from featx.errors import UserError
from featx.storage import atomic_write_csv

__all__ = [
    "LAYOUTS", "SPLITS", "DataError", "Record", "Manifest",
    "find_images", "detect_layout", "label_for", "assign_split", "build_manifest", "load_dataset",
]

LAYOUTS = ("auto", "kaggle", "folders", "unlabeled")
SPLITS = ("train", "val", "test", "unlabeled")
MANIFEST_TAG = "# featx-manifest "
# ``label.N.ext``; a label is any word in any script (``dög``, ``猫``), starting with a letter.
KAGGLE_NAME = re.compile(r"^(?P<label>[^\W\d_][\w-]*)\.[^.]+\.\w+$")
MANIFEST_COLUMNS = ("path", "label", "split")
# 1: splits keyed on the relative path (no "version" in the settings line); 2: keyed on the file's sha1.
MANIFEST_VERSION = 2


class DataError(UserError, ValueError):
    """The data cannot be used as asked; the message names the file and the fix (a ``ValueError`` too)."""


@dataclass(frozen=True)
class Record:
    """One image of a dataset."""

    path: str  # POSIX path relative to the dataset root
    label: str | None
    split: str
    sha1: str = ""


@dataclass
class Manifest:
    """The images of a dataset with their labels and splits."""

    root: Path
    layout: str
    seed: int = 0
    val: float = 0.1
    test: float = 0.1
    records: list[Record] = field(default_factory=list)
    layout_reason: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) not indexed
    warnings: list[str] = field(default_factory=list)  # things the user should look at
    version: int = MANIFEST_VERSION  # how the splits were keyed (see MANIFEST_VERSION)

    @property
    def name(self) -> str:
        """A short dataset name for cache files: the root folder's name, with its
        parent's when the folder has a generic name (``catsdogs-dev-train``)."""
        generic = {"train", "test", "test1", "val", "valid", "images", "data", "img"}
        parts = [self.root.name]
        if self.root.name.lower() in generic and self.root.parent.name:
            parts.insert(0, self.root.parent.name)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)) or "dataset"

    @property
    def label_names(self) -> list[str]:
        """Sorted distinct labels (empty for an unlabeled dataset)."""
        return sorted({r.label for r in self.records if r.label is not None})

    def counts(self) -> dict[str, Counter]:
        """Number of images per split and label: ``{"train": Counter({"cat": 800, ...}), ...}``."""
        table: dict[str, Counter] = {}
        for record in self.records:
            table.setdefault(record.split, Counter())[record.label or "-"] += 1
        return table

    def duplicate_groups(self) -> list[list[Record]]:
        """Records with the same content (sha1) under different paths: groups of two or more, in
        manifest order (records without a sha1 are in none)."""
        groups: dict[str, list[Record]] = {}
        for record in self.records:
            if record.sha1:
                groups.setdefault(record.sha1, []).append(record)
        return [group for group in groups.values() if len(group) > 1]

    def label_conflicts(self) -> list[list[Record]]:
        """The duplicate groups whose copies carry different labels (unlabeled copies aside)."""
        return [group for group in self.duplicate_groups()
                if len({r.label for r in group if r.label is not None}) > 1]

    def sha256(self) -> str:
        """Fingerprint of the images, labels and splits (not of where the root lives)."""
        text = "".join(f"{r.path}\t{r.label or ''}\t{r.split}\t{r.sha1}\n" for r in self.records)
        return hashlib.sha256(text.encode()).hexdigest()

    def fingerprint(self) -> str:
        """Short hash naming *this dataset and split*: root, paths, labels and splits.

        File contents (sha1) are left out on purpose: a changed image keeps the cache's name (its
        row is recomputed), while another folder, another seed or other split fractions give
        another name, so two datasets never publish over each other's cache.
        """
        text = "".join(f"{r.path}\t{r.label or ''}\t{r.split}\n" for r in self.records)
        return hashlib.sha256(f"{Path(self.root).resolve()}\x00{self.layout}\n{text}".encode()).hexdigest()[:10]

    def write(self, path: str | os.PathLike) -> Path:
        """Write the manifest CSV atomically (a reader never sees half a file)."""
        settings = {"root": str(self.root), "layout": self.layout, "seed": self.seed,
                    "val": self.val, "test": self.test, "version": self.version}
        rows = [[r.path, r.label or "", r.split, r.sha1] for r in self.records]
        return atomic_write_csv(path, [["path", "label", "split", "sha1"], *rows],
                                preamble=MANIFEST_TAG + json.dumps(settings, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Manifest":
        """Read a manifest written by :meth:`write` (or by hand with the same columns).

        A settings line without ``"version"`` is a version 1 manifest (splits keyed on the path): its
        records are read as they are. A row with no sha1 (hand-edited, or no ``sha1`` column) gets
        its file hashed now, so no stage ever sees an empty sha1; a :class:`DataError` names the rows
        whose file cannot be read.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot read manifest {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} is not a featx manifest (not UTF-8 text); create one with: "
                            f"featx index DIR -o {path}") from None
        first, _, rest = text.partition("\n")
        if not first.startswith(MANIFEST_TAG):
            raise DataError(f"{path} is not a featx manifest (first line should start with "
                            f"{MANIFEST_TAG.strip()!r}); create one with: featx index DIR -o {path}")
        fix = f"fix the file, or make a new one with: featx index DIR -o {path}"
        try:
            settings = json.loads(first[len(MANIFEST_TAG):])
            root = Path(settings["root"])
            options = dict(layout=settings["layout"], seed=int(settings["seed"]),
                           val=float(settings["val"]), test=float(settings["test"]),
                           version=int(settings.get("version", 1)))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: the settings line is not valid ({type(exc).__name__}: {exc}); {fix}") from None
        if not 1 <= options["version"] <= MANIFEST_VERSION:
            raise DataError(f"{path}: manifest version {options['version']} is not one this featx reads "
                            f"(1 to {MANIFEST_VERSION}); upgrade featx, or {fix}")
        if not root.is_absolute():
            root = (path.parent / root).resolve()
        reader = csv.DictReader(io.StringIO(rest))
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: "
                            f"{', '.join(reader.fieldnames or []) or 'none'}; expected path,label,split,sha1); {fix}")
        records = []
        for line, row in enumerate(reader, start=3):
            split = row["split"]
            if split not in SPLITS or row["path"] is None:
                raise DataError(f"{path}: line {line} (path {row['path']!r}) has split {split!r}; "
                                f"expected one of {', '.join(SPLITS)}")
            records.append(Record(row["path"], row["label"] or None, split, row.get("sha1") or ""))
        records = _hash_missing(records, root, path)
        manifest = cls(root=root, records=records, layout_reason=f"read from {path}", **options)
        manifest.warnings.extend(_leak_warnings(manifest, fix=f"re-index with: featx index {root} -o {path}"))
        return manifest


def _hash_missing(records: list[Record], root: Path, manifest_path: Path) -> list[Record]:
    """``records`` with every empty sha1 computed from its file under ``root``."""
    if all(r.sha1 for r in records):
        return records
    from featx.images import ImageError, file_sha1

    hashed, unreadable = [], []
    for line, record in enumerate(records, start=3):
        if not record.sha1:
            try:
                record = Record(record.path, record.label, record.split, file_sha1(root / record.path))
            except ImageError as exc:
                unreadable.append((line, record.path, exc.reason))
        hashed.append(record)
    if unreadable:
        line, name, reason = unreadable[0]
        raise DataError(f"{manifest_path}: {len(unreadable)} row(s) have no sha1 and their file cannot be read "
                        f"to compute it, first line {line}: {root / name} ({reason}); fill in the sha1 column, "
                        f"remove those rows, or re-index with: featx index {root} -o {manifest_path}")
    return hashed


def _leak_warnings(manifest: Manifest, fix: str) -> list[str]:
    """Warnings about identical files that carry different labels or sit in different splits."""
    def examples(groups: list[list[Record]], show: Callable[[Record], str]) -> str:
        listed = "; ".join(" = ".join(show(r) for r in group) for group in groups[:3])
        return listed + (f"; and {len(groups) - 3} more" if len(groups) > 3 else "")

    warnings = []
    conflicts = manifest.label_conflicts()
    if conflicts:
        warnings.append(f"{len(conflicts)} group(s) of identical files carry different labels: "
                        f"{examples(conflicts, lambda r: f'{r.path} ({r.label})')}; each group stays in one "
                        f"split with its labels as they are: fix the labels or delete the wrong copies, then "
                        f"run featx index again")
    straddling = [g for g in manifest.duplicate_groups() if len({r.split for r in g}) > 1]
    if straddling:
        warnings.append(f"{len(straddling)} group(s) of identical files sit in more than one split, so the same "
                        f"image is trained on and scored: {examples(straddling, lambda r: f'{r.path} ({r.split})')}; "
                        f"{fix} (splits keyed on content)")
    return warnings


def find_images(root: str | os.PathLike) -> list[str]:
    """Image files under ``root`` (by extension), as sorted POSIX paths relative to it.

    Hidden files and folders (``.name``) are skipped. Symbolic links are followed, but a folder or
    file reached more than once (a link back to a parent folder, two links or hard links to one file)
    is listed once, under the path that crosses the fewest links, then the first in sorted order:
    a loop never multiplies the dataset, and a real folder's name wins over a link's (its label).
    """
    from featx.images import is_image_name

    root = Path(root)
    # Folders in order of (links crossed, relative path): a parent sorts before its children, so the
    # first visit of a folder is by its best path and later visits (a loop, a second link) are skipped.
    queue: list[tuple[int, str, str]] = [(0, "", str(root))]
    folders_seen: set[tuple[int, int]] = set()
    best: dict[object, tuple[int, str]] = {}  # file identity -> (links crossed, relative path)
    while queue:
        links, rel_folder, folder = heapq.heappop(queue)
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in folders_seen:
                continue
            folders_seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError:  # an unreadable folder is passed over, as os.walk does
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel_path = rel_folder + entry.name
            crossed = links + entry.is_symlink()
            try:
                is_folder = entry.is_dir()
            except OSError:
                is_folder = False
            if is_folder:
                heapq.heappush(queue, (crossed, rel_path + "/", entry.path))
            elif is_image_name(entry.name):
                try:
                    target = entry.stat()
                    identity: object = (target.st_dev, target.st_ino)
                except OSError:  # a broken link: listed, and reported unreadable when it is hashed
                    identity = rel_path
                if identity not in best or (crossed, rel_path) < best[identity]:
                    best[identity] = (crossed, rel_path)
    return sorted(rel_path for _, rel_path in best.values())


def detect_layout(paths: list[str]) -> tuple[str, str]:
    """Guess the layout of relative image paths; returns ``(layout, reason)``."""
    top = [p for p in paths if "/" not in p]
    nested = len(paths) - len(top)
    if nested and not top:
        folders = sorted({p.rsplit("/", 2)[-2] for p in paths if "/" in p})
        return "folders", f"all images are in sub-folders ({len(folders)} labels from folder names)"
    kaggle = [m.group("label") for p in top if (m := KAGGLE_NAME.match(p))]
    if top and len(kaggle) >= 0.9 * len(top) and len(set(kaggle)) >= 1:
        labels = sorted(set(kaggle))
        return "kaggle", (f"{len(kaggle)} of {len(top)} file names look like label.N.ext "
                          f"(labels: {', '.join(labels[:10])}{'...' if len(labels) > 10 else ''})")
    if kaggle:
        return "unlabeled", mixed_names_warning(top)
    return "unlabeled", "file names carry no label and there are no label folders"


def mixed_names_warning(names: list[str]) -> str:
    """One line saying that some file names look like ``label.N.ext`` and others do not."""
    labelled = [n for n in names if KAGGLE_NAME.match(n.rsplit("/", 1)[-1])]
    other = [n for n in names if not KAGGLE_NAME.match(n.rsplit("/", 1)[-1])]
    return (f"{len(labelled)} of {len(names)} file names look like label.N.ext (e.g. {labelled[0]}) "
            f"and {len(other)} do not (e.g. {other[0]}); rename them, or pass --layout kaggle to use "
            f"only the labelled ones, or --layout unlabeled to silence this")


def label_for(path: str, layout: str) -> str | None:
    """The label of one relative path under ``layout`` (None when it has none)."""
    if layout == "kaggle":
        match = KAGGLE_NAME.match(path.rsplit("/", 1)[-1])
        return match.group("label") if match else None
    if layout == "folders":
        return path.rsplit("/", 2)[-2] if "/" in path else None
    if layout == "unlabeled":
        return None
    raise DataError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")


def assign_split(key: str, seed: int, val: float, test: float) -> str:
    """Split of one image, from a hash of (seed, key) alone.

    ``key`` is the file's sha1 (version 2 manifests: identical files share a split) or its relative
    path (version 1). The same key always lands in the same split for a seed, whatever else is in
    the dataset, and every class is split by the same rule (stratified in expectation).
    """
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def build_manifest(root: str | os.PathLike, layout: str = "auto", val: float = 0.1, test: float = 0.1,
                   seed: int = 0, hash_files: bool = True, progress: Callable[[int], None] | None = None) -> Manifest:
    """Index the images under the folder ``root``.

    Parameters
    ----------
    layout : {"auto", "kaggle", "folders", "unlabeled"}
    val, test : float
        Fractions of labelled images for validation and test (the rest is train); ``seed`` changes
        which images go to which split.
    hash_files : bool
        Record each file's sha1: it keys the split (identical files share one; a version 2
        manifest) and lets a cache notice a changed file. ``False`` (benchmarks that only list
        files) keys the split on the relative path instead, as version 1 manifests did.
    progress : callable, optional
        Called with the number of files hashed since the last call.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"{root} {what}; give the folder that holds the images")
    if layout not in LAYOUTS:
        raise DataError(f"--layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"--val and --test must be fractions in [0, 1) adding up to less than 1; "
                        f"got val={val}, test={test}")
    paths = find_images(root)
    if not paths:
        raise DataError(f"no images found under {root} (looked for .jpg .jpeg .png .bmp .webp .gif .tif .tiff)")
    reason, asked = f"asked for {layout}", layout
    if layout == "auto":
        layout, reason = detect_layout(paths)
    from featx.images import ImageError, file_sha1

    records = []
    unlabeled_paths = []
    skipped: list[tuple[str, str]] = []
    warnings: list[str] = []
    for path in paths:
        label = label_for(path, layout)
        if layout != "unlabeled" and label is None:
            unlabeled_paths.append(path)
            continue
        try:
            sha1 = file_sha1(root / path) if hash_files else ""
        except ImageError as exc:  # one unreadable file is reported, the rest indexed
            skipped.append((path, exc.reason))
            continue
        finally:
            if progress is not None:
                progress(1)
        split = "unlabeled" if label is None else assign_split(sha1 or path, seed, val, test)
        records.append(Record(path, label, split, sha1))
    if unlabeled_paths:
        reason += (f"; skipped {len(unlabeled_paths)} file(s) with no label under layout {layout}, "
                   f"e.g. {unlabeled_paths[0]}")
        if layout == "kaggle":
            warnings.append(mixed_names_warning([p for p in paths if "/" not in p] or paths))
    elif asked == "auto" and layout == "unlabeled" and any(KAGGLE_NAME.match(p) for p in paths if "/" not in p):
        warnings.append(reason)
    if not records:
        if skipped:
            raise DataError(f"no image under {root} could be read ({len(skipped)} failed, first: "
                            f"{skipped[0][0]}: {skipped[0][1]})")
        raise DataError(f"no image under {root} has a label in layout {layout!r}; "
                        f"try --layout unlabeled or --layout folders")
    manifest = Manifest(root=root.resolve(), layout=layout, seed=seed, val=val, test=test,
                        version=MANIFEST_VERSION if hash_files else 1, records=records,
                        layout_reason=reason, skipped=skipped, warnings=warnings)
    manifest.warnings.extend(_leak_warnings(manifest, fix=f"run featx index {root} again"))
    return manifest


def load_dataset(source: str | os.PathLike, **index_options) -> Manifest:
    """A manifest from either a manifest CSV or a folder of images (indexed on the fly)."""
    source = Path(source).expanduser()
    if source.is_file():
        return Manifest.read(source)
    if source.is_dir():
        return build_manifest(source, **index_options)
    raise DataError(f"{source} does not exist; give a folder of images or a manifest made by featx index")
