"""Project files: the labelled datasets a model trains on, read from TOML, with their splits.

A project file lists ``[[dataset]]`` tables (see :func:`load_project`); each becomes a
:class:`DatasetSpec` with its globs resolved, so everything after reading works on files
that exist. Errors name the project file, the dataset and the field.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hydrapicker.defaults import COORDINATE_FORMATS
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.checks import file_key
from hydrapicker.io.coordinates import guess_format, is_decoys_file
from hydrapicker.io.micrograph import is_micrograph_path, micrograph_stem

__all__ = ["SPLITS", "DatasetSpec", "load_project", "split_stems"]

#: The split names a project may use.
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """One ``[[dataset]]`` of a project TOML, with its globs resolved.

    Attributes:
        name: unique dataset name (the name of its head).
        micrographs: every micrograph file the glob matched, sorted.
        coordinates: micrograph stem -> coordinate file. Micrographs without an entry are
            unlabelled and in no split. A file holding many micrographs (one STAR or
            ``.cs`` for the dataset) appears as the value of every stem.
        format: coordinate format name (a key of ``hydrapicker.defaults.COORDINATE_FORMATS``).
        pixel_size: Å per pixel of the micrographs as stored.
        diameter: particle diameter in Å.
        splits: ``"train"``/``"val"``/``"test"`` -> labelled micrograph stems. Without a
            ``split`` in the project every labelled micrograph is in ``train``; use
            :func:`split_stems` for the stems to train or validate on (an empty ``val``
            falls back to ``train`` there).
        source: the project file this dataset was read from.
    """

    name: str
    micrographs: tuple[Path, ...]
    coordinates: Mapping[str, Path]
    format: str
    pixel_size: float
    diameter: float
    splits: Mapping[str, tuple[str, ...]]
    source: Path | None = None

    @property
    def diameter_px(self) -> float:
        """Particle diameter in stored-micrograph pixels."""
        return self.diameter / self.pixel_size

    def micrograph_path(self, stem: str) -> Path:
        """The micrograph file of ``stem``."""
        for path in self.micrographs:
            if micrograph_stem(path) == stem:
                return path
        raise HydraPickerError(f"dataset {self.name!r}: no micrograph named {stem!r}")


def split_stems(spec: DatasetSpec, split: str) -> tuple[str, ...]:
    """The micrograph stems of ``split``; an empty ``val`` falls back to ``train``.

    The fallback lets a dataset of one or two micrographs still give a validation loss
    (on its training micrographs, so it then measures fit, not generalisation).
    ``test`` never falls back.
    """
    if split not in SPLITS:
        raise HydraPickerError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    stems = tuple(spec.splits.get(split, ()))
    if not stems and split == "val":
        stems = tuple(spec.splits.get("train", ()))
    return stems


_DATASET_FIELDS = {
    "name",
    "micrographs",
    "coordinates",
    "format",
    "pixel_size",
    "diameter",
    "split",
    "meta",
    *SPLITS,
}


def load_project(path: str | os.PathLike) -> list[DatasetSpec]:
    """Read a project TOML into its datasets, following ``include``.

    The file holds ``[[dataset]]`` tables with ``name``, ``micrographs`` (glob),
    ``coordinates`` (glob; ``*_decoys.*`` files are skipped), optional ``format`` (else
    from the coordinate files' suffix), ``pixel_size`` (Å/px), ``diameter`` (Å), optional
    ``split`` and optional free-form ``meta`` table; and an optional top-level
    ``include = ["other.toml", ...]`` whose datasets join this one's. Globs and includes
    are relative to the folder of the file that names them.

    Splits: ``split = {train = 0.8, val = 0.1, test = 0.1}`` assigns each micrograph by a
    hash of its stem (so adding micrographs never moves the others; if that leaves
    ``train`` empty, the lowest-hashed micrograph moves to ``train``). Explicit lists
    ``train = [...]``, ``val = [...]``, ``test = [...]`` (at the dataset level or inside
    ``split``) name stems; unlisted micrographs go to ``train`` unless ``train`` is listed.
    No split at all: every labelled micrograph is in ``train`` (see :func:`split_stems`
    for the ``val`` fallback).

    Raises:
        HydraPickerError: unreadable TOML, missing or mistyped field, a glob matching
            nothing, a coordinate file with no micrograph, duplicate dataset names,
            non-positive pixel size or diameter; naming the file, dataset and field.
    """
    specs = _load_project_file(Path(path), stack=())
    seen: dict[str, Path | None] = {}
    for spec in specs:
        if spec.name in seen:
            raise HydraPickerError(
                f"{spec.source}: dataset {spec.name!r}: field 'name': duplicate dataset name "
                f"(also in {seen[spec.name]})"
            )
        seen[spec.name] = spec.source
    return specs


def _load_project_file(path: Path, stack: tuple[Path, ...]) -> list[DatasetSpec]:
    path = path.resolve() if path.exists() else path
    if path in stack:
        raise HydraPickerError(f"{stack[-1]}: field 'include': {path} includes itself (cycle)")
    if not path.is_file():
        where = f"{stack[-1]}: field 'include': " if stack else ""
        raise HydraPickerError(f"{where}{path}: no such project file")
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HydraPickerError(f"{path}: not a valid TOML project file ({exc})") from exc

    includes = table.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise HydraPickerError(f"{path}: field 'include': expected a list of file names, got {includes!r}")
    entries = table.get("dataset", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise HydraPickerError(f"{path}: 'dataset' must be [[dataset]] tables")
    if not entries and not includes:
        raise HydraPickerError(f"{path}: no [[dataset]] tables and no 'include'")

    specs = [_parse_dataset(path, index, entry) for index, entry in enumerate(entries, start=1)]
    for name in includes:
        specs.extend(_load_project_file(path.parent / name, stack + (path,)))
    return specs


def _parse_dataset(project: Path, index: int, entry: dict[str, Any]) -> DatasetSpec:
    label = f"dataset #{index}"
    if isinstance(entry.get("name"), str) and entry["name"].strip():
        label = f"dataset {entry['name']!r}"

    def fail(field: str, why: str) -> HydraPickerError:
        return HydraPickerError(f"{project}: {label}: field {field!r}: {why}")

    def required(field: str) -> Any:
        if field not in entry:
            raise fail(field, "missing")
        return entry[field]

    def text(field: str) -> str:
        value = required(field)
        if not isinstance(value, str) or not value.strip():
            raise fail(field, f"expected a non-empty string, got {value!r}")
        return value

    def positive(field: str) -> float:
        value = required(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(field, f"expected a number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise fail(field, f"must be positive, got {value!r}")
        return float(value)

    unknown = sorted(set(entry) - _DATASET_FIELDS)
    if unknown:
        raise fail(unknown[0], "unknown field (free-form notes go in a 'meta' table)")
    name = text("name").strip()
    folder = project.parent

    mic_glob = text("micrographs")
    micrographs = tuple(p for p in _glob(folder, mic_glob) if is_micrograph_path(p))
    if not micrographs:
        raise fail("micrographs", f"{mic_glob!r} matches no micrograph files in {folder}")
    stems = [micrograph_stem(p) for p in micrographs]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise fail("micrographs", f"{mic_glob!r} matches several files named {twice[0]!r}")

    coord_glob = text("coordinates")
    coord_files = [
        p for p in _glob(folder, coord_glob) if p.is_file() and not is_micrograph_path(p) and not is_decoys_file(p)
    ]
    if not coord_files:
        raise fail("coordinates", f"{coord_glob!r} matches no coordinate files in {folder}")

    if "format" in entry:
        fmt = text("format").strip().lower()
        if fmt not in COORDINATE_FORMATS:
            raise fail("format", f"unknown format {fmt!r} (expected one of {', '.join(COORDINATE_FORMATS)})")
    else:
        try:
            guessed = {guess_format(p) for p in coord_files}
        except HydraPickerError as exc:
            raise fail("format", f"missing, and {exc}") from exc
        if len(guessed) != 1:
            raise fail("format", f"missing, and the coordinate files mix formats {sorted(guessed)}")
        fmt = guessed.pop()

    coordinates = _match_coordinates(coord_files, set(stems), fail)
    pixel_size = positive("pixel_size")
    diameter = positive("diameter")
    splits = _parse_splits(entry, [s for s in stems if s in coordinates], fail)
    return DatasetSpec(
        name=name,
        micrographs=micrographs,
        coordinates=coordinates,
        format=fmt,
        pixel_size=pixel_size,
        diameter=diameter,
        splits=splits,
        source=project,
    )


def _glob(folder: Path, pattern: str) -> list[Path]:
    full = pattern if os.path.isabs(pattern) else str(folder / pattern)
    return sorted(Path(p) for p in glob.glob(full, recursive=True))


def _match_coordinates(files: list[Path], stems: set[str], fail: Any) -> dict[str, Path]:
    by_stem = {}
    for path in files:
        key = file_key(path)
        by_stem.setdefault(key, path)
    unmatched = [p for k, p in by_stem.items() if k not in stems]
    if len(files) == 1 and unmatched:
        # One file for the whole dataset (a RELION STAR or cryoSPARC .cs): every
        # micrograph reads its rows from it.
        return {stem: files[0] for stem in sorted(stems)}
    if unmatched:
        raise fail("coordinates", f"{unmatched[0]} matches no micrograph (coordinate files are matched by file stem)")
    return dict(sorted(by_stem.items()))


def _stem_hash(stem: str) -> float:
    digest = hashlib.sha256(stem.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _parse_splits(entry: dict[str, Any], labelled: list[str], fail: Any) -> dict[str, tuple[str, ...]]:
    split = entry.get("split")
    lists = {k: entry[k] for k in SPLITS if k in entry}
    if split is not None:
        if not isinstance(split, dict) or not split:
            raise fail("split", f"expected a table like {{train = 0.8, val = 0.1, test = 0.1}}, got {split!r}")
        bad = sorted(set(split) - set(SPLITS))
        if bad:
            raise fail("split", f"unknown split {bad[0]!r} (expected {', '.join(SPLITS)})")
        if all(isinstance(v, list) for v in split.values()):
            if lists:
                raise fail("split", "give split lists either inside 'split' or at the dataset level, not both")
            lists = dict(split)
        elif lists:
            raise fail("split", "give either split fractions or split lists, not both")
        else:
            return _hash_splits(split, labelled, fail)
    if lists:
        return _listed_splits(lists, labelled, fail)
    return {"train": tuple(labelled), "val": (), "test": ()}


def _hash_splits(fractions: dict[str, Any], labelled: list[str], fail: Any) -> dict[str, tuple[str, ...]]:
    for key, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise fail("split", f"{key} = {value!r}: expected a fraction between 0 and 1")
    total = sum(float(v) for v in fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise fail("split", f"fractions sum to {total:g}, expected 1")
    edges = np.cumsum([float(fractions.get(k, 0.0)) for k in SPLITS])
    out: dict[str, list[str]] = {k: [] for k in SPLITS}
    for stem in labelled:
        out[SPLITS[min(int(np.searchsorted(edges, _stem_hash(stem), side="right")), 2)]].append(stem)
    if not out["train"] and labelled and fractions.get("train", 0) > 0:
        first = min(labelled, key=_stem_hash)
        for key in ("val", "test"):
            if first in out[key]:
                out[key].remove(first)
        out["train"].append(first)
    return {k: tuple(v) for k, v in out.items()}


def _listed_splits(lists: dict[str, Any], labelled: list[str], fail: Any) -> dict[str, tuple[str, ...]]:
    known = set(labelled)
    out: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for key, value in lists.items():
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise fail(key, f"expected a list of micrograph stems, got {value!r}")
        for stem in value:
            if stem not in known:
                raise fail(key, f"{stem!r} is not a labelled micrograph of this dataset")
            if stem in owner:
                raise fail(key, f"{stem!r} is also in {owner[stem]!r}")
            owner[stem] = key
        out[key] = tuple(value)
    if "train" not in out:
        out["train"] = tuple(s for s in labelled if s not in owner)
    return {k: tuple(out.get(k, ())) for k in SPLITS}
