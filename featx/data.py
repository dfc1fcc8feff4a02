"""Find images, read their labels, split them deterministically, and keep it all in a manifest.

The layouts (``kaggle``, ``folders``, ``unlabeled``, ``auto``), the split rule (a hash of the seed and
the relative path alone, so adding images never moves one already placed) and the manifest CSV are
described in README.md, "Layouts" and "The manifest".
"""

from __future__ import annotations

import csv
import hashlib
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
                    "val": self.val, "test": self.test}
        rows = [[r.path, r.label or "", r.split, r.sha1] for r in self.records]
        return atomic_write_csv(path, [["path", "label", "split", "sha1"], *rows],
                                preamble=MANIFEST_TAG + json.dumps(settings, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Manifest":
        """Read a manifest written by :meth:`write` (or by hand with the same columns)."""
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
                           val=float(settings["val"]), test=float(settings["test"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: the settings line is not valid ({type(exc).__name__}: {exc}); {fix}") from None
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
        return cls(root=root, records=records, layout_reason=f"read from {path}", **options)


def find_images(root: str | os.PathLike) -> list[str]:
    """Image files under ``root`` (by extension), as sorted POSIX paths relative to it.

    Hidden files and folders (``.name``) are skipped.
    """
    from featx.images import is_image_name

    root = Path(root)
    found = []
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_folder = Path(folder).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and is_image_name(name):
                found.append((rel_folder / name).as_posix())
    return sorted(found)


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


def assign_split(path: str, seed: int, val: float, test: float) -> str:
    """Split of one image, from a hash of (seed, relative path) alone.

    The same path always lands in the same split for a seed, whatever else is in the dataset.
    """
    digest = hashlib.sha256(f"{seed}\x00{path}".encode()).digest()
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
        Record each file's sha1 (lets a cache notice a changed file).
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
        split = "unlabeled" if label is None else assign_split(path, seed, val, test)
        try:
            sha1 = file_sha1(root / path) if hash_files else ""
        except ImageError as exc:  # one unreadable file is reported, the rest indexed
            skipped.append((path, exc.reason))
            continue
        finally:
            if progress is not None:
                progress(1)
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
    return Manifest(root=root.resolve(), layout=layout, seed=seed, val=val, test=test,
                    records=records, layout_reason=reason, skipped=skipped, warnings=warnings)


def load_dataset(source: str | os.PathLike, **index_options) -> Manifest:
    """A manifest from either a manifest CSV or a folder of images (indexed on the fly)."""
    source = Path(source).expanduser()
    if source.is_file():
        return Manifest.read(source)
    if source.is_dir():
        return build_manifest(source, **index_options)
    raise DataError(f"{source} does not exist; give a folder of images or a manifest made by featx index")
