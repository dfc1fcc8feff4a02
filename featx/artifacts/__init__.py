"""The files stages hand to each other, as typed, versioned records.

Every contract between stages (``results.json``, ``model.json``, ``state.json``...) is a
:class:`Record` dataclass declared with its ``kind`` and ``version``, written atomically as JSON
with a ``"schema": {"kind": ..., "version": ...}`` header and read back with a check of both: a file
without the header (version 0, written before records existed) is read as it is when it has every
field, a newer version is refused with one line, and a missing, unreadable or foreign file is one
:class:`ArtifactError` naming the file and the fix. :mod:`featx.artifacts.results` holds the result
rows, ranking and sweep records; :mod:`featx.artifacts.runs` the training stages' records.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import UserError
from ..storage import atomic_write_json

__all__ = ["ArtifactError", "Record", "read_json", "SCHEMA_KEY"]

SCHEMA_KEY = "schema"

R = TypeVar("R", bound="Record")


class ArtifactError(UserError, ValueError):
    """A stage's input file is missing, damaged, foreign or from an incompatible featx version."""


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """Parse a JSON file; any failure is one :class:`ArtifactError` naming ``path`` and ``fix``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path} is a folder, expected a JSON file; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.__class__.__name__}); {fix}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); {fix}") from None


@dataclasses.dataclass
class Record:
    """Base of every versioned record. Subclasses are dataclasses declared with their ``kind``, ``version``
    (default 1) and ``fix``: the advice given when the file cannot be used (which command writes it).
    """

    KIND: ClassVar[str] = "record"
    VERSION: ClassVar[int] = 1
    FIX: ClassVar[str] = "run the featx command that writes it again"

    def __init_subclass__(cls, kind: str | None = None, version: int = 1, fix: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.KIND, cls.VERSION = kind, version
        if fix is not None:
            cls.FIX = fix

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data[SCHEMA_KEY] = {"kind": self.KIND, "version": self.VERSION}
        return data

    @classmethod
    def from_dict(cls: type[R], data: Any, where: str = "the record") -> R:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} holds a {type(data).__name__}, not a featx {cls.KIND}; {cls.FIX}")
        data = dict(data)
        header = data.pop(SCHEMA_KEY, None)
        if header is None:
            version = 0
        else:
            if not isinstance(header, dict) or header.get("kind") != cls.KIND:
                kind = header.get("kind") if isinstance(header, dict) else header
                raise ArtifactError(f"{where} is a featx {kind!r} file, expected {cls.KIND!r}; {cls.FIX}")
            version = header.get("version")
            if not isinstance(version, int) or version < 1:
                raise ArtifactError(f"{where} has a damaged schema header {header!r}; {cls.FIX}")
        if version > cls.VERSION:
            raise ArtifactError(f"{where} was written by a newer featx ({cls.KIND} version {version}; this "
                                f"featx reads up to {cls.VERSION}): upgrade featx, or {cls.FIX}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise ArtifactError(f"{where} is not a complete featx {cls.KIND} (missing {', '.join(missing)}); "
                                f"{cls.FIX}")
        return cls(**{key: value for key, value in data.items() if key in names})

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically as JSON (a reader sees the old file or the new one, never half)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def read(cls: type[R], path: str | os.PathLike) -> R:
        return cls.from_dict(read_json(path, cls.FIX), str(path))
