"""The output folder of a picking run: where each file goes, and the record of what produced it.

``OUT/`` as ``pick`` (and ``relion``, ``pick --watch``) write it, and ``threshold``, ``report``
and ``relion`` read it::

    OUT/command.json            the run record (:class:`RunRecord`)
    OUT/<format>/<stem><suffix> coordinates per micrograph and format (csv always)
    OUT/candidates/<stem>.csv   every candidate down to CANDIDATE_FLOOR, whatever the threshold
    OUT/candidates/<stem>.json  its box size, micrograph shape, micrograph path and overlay (if drawn)
    OUT/picks.csv               every micrograph's picks (micrograph,x,y,score), rebuilt from csv/
    OUT/threshold.json          the threshold last set with ``hydrapicker threshold --set``

This module is the one place that knows those names.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydrapicker import __version__
from hydrapicker.defaults import COORDINATE_FORMATS
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.coordinates import read_picks, write_picks
from hydrapicker.io.files import atomic_write_text, refuse_overwriting_inputs
from hydrapicker.io.micrograph import micrograph_stem

__all__ = [
    "RUN_RECORD",
    "PICKING_OPTIONS",
    "RUN_RECORD_FORMAT",
    "THRESHOLD_RECORD",
    "RunRecord",
    "candidate_paths",
    "check_outputs_apart",
    "current_threshold",
    "expected_outputs",
    "foreign_files",
    "json_float",
    "output_paths",
    "picking_changes",
    "read_sidecar",
    "rebuild_picks_csv",
    "recorded_threshold",
    "tables",
]

#: The run record's file name in an output folder.
RUN_RECORD = "command.json"

#: The run record's layout tag. Records without one (written before it existed) hold the same
#: fields: ``options`` was then argparse's ``vars()``, whose pick-run keys are the ones kept here.
RUN_RECORD_FORMAT = "hydrapicker-run/2"

#: Where ``threshold --set`` records the threshold the coordinate files were re-written at.
THRESHOLD_RECORD = "threshold.json"


def json_float(value: float, digits: int | None = None) -> float | None:
    """A float for JSON: NaN as null (JSON has no NaN), rounded to ``digits`` decimals when given."""
    if math.isnan(value):
        return None
    return float(value) if digits is None else round(value, digits)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class RunRecord:
    """What produced an output folder: the verb, its settings, the version, time and command line.

    ``options`` holds the run's settings as JSON values under stable names (for a picking run:
    ``micrographs``, ``format``, ``overlay``, ``threshold``, ``diameter_A``, ``diameter_px``,
    ``pixel_size``, ``head`` ...); the properties below are what other verbs read back, and they
    read records written before the record had a format tag the same way.
    """

    verb: str
    options: Mapping[str, Any]
    hydrapicker_version: str = __version__
    time: str = field(default_factory=_now)
    command_line: tuple[str, ...] = field(default_factory=lambda: tuple(sys.argv))
    python: str = field(default_factory=platform.python_version)
    format: str = RUN_RECORD_FORMAT

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "verb": self.verb,
            "hydrapicker_version": self.hydrapicker_version,
            "time": self.time,
            "command_line": list(self.command_line),
            "python": self.python,
            "options": _plain(dict(self.options)),
        }

    def write(self, folder: str | os.PathLike, name: str = RUN_RECORD) -> Path:
        """Write the record as ``folder/name``, atomically."""
        path = Path(folder) / name
        atomic_write_text(path, json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike, name: str = RUN_RECORD) -> RunRecord | None:
        """The record in ``folder`` (None when there is none); this format or the untagged one before it."""
        path = Path(folder) / name
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("options", {}), dict):
                raise ValueError("expected a JSON object with an 'options' object")
            return cls(
                verb=str(data.get("verb", "")),
                options=dict(data.get("options", {})),
                hydrapicker_version=str(data.get("hydrapicker_version", "")),
                time=str(data.get("time", "")),
                command_line=tuple(str(a) for a in data.get("command_line") or ()),
                python=str(data.get("python", "")),
                format=str(data.get("format", "hydrapicker-run/1")),
            )
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise HydraPickerError(f"{path}: not a readable run record ({exc})") from exc

    def _float(self, key: str) -> float | None:
        try:
            value = self.options.get(key)
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    @property
    def threshold(self) -> float | None:
        """The score threshold the run wrote its coordinate files at."""
        return self._float("threshold")

    @property
    def formats(self) -> list[str]:
        """The coordinate formats the run wrote."""
        value = self.options.get("format") or []
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def overlay(self) -> str | None:
        """The run's overlay folder, if it drew overlays."""
        value = self.options.get("overlay")
        return None if value is None else str(value)

    @property
    def micrographs(self) -> list[str]:
        """The micrograph files, folders or globs the run picked."""
        value = self.options.get("micrographs") or []
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def box_size(self) -> float | None:
        """The particle diameter given, in stored px (from ``diameter_px``, or ``diameter_A`` / ``pixel_size``)."""
        if self._float("diameter_px"):
            return self._float("diameter_px")
        diameter, pixel_size = self._float("diameter_A"), self._float("pixel_size")
        return diameter / pixel_size if diameter and pixel_size else None


#: A picking run's options that change its picks, with the flag that sets each: a rerun into a folder
#: that holds picks must agree on them, or the folder would mix picks made two ways.
PICKING_OPTIONS: dict[str, str] = {
    "model": "--model",
    "head": "--head",
    "diameter_A": "--diameter-A",
    "diameter_px": "--diameter-px",
    "pixel_size": "--pixel-size",
    "threshold": "--threshold",
    "nms_iou": "--nms-iou",
    "refine_radius": "--refine-radius",
    "whole_boxes": "--keep-edge-picks",  # True unless --keep-edge-picks (before issue 20: only with --whole-boxes)
    "correct_size": "--fixed-diameter",
}

#: Options set by a flag whose presence turns them off: told as the flag "given" / "not given".
_NEGATED_FLAGS = ("whole_boxes", "correct_size")


def _same(key: str, old: Any, new: Any) -> bool:
    if key == "model" and old is not None and new is not None:
        return os.path.realpath(str(old)) == os.path.realpath(str(new))
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return math.isclose(float(old), float(new), rel_tol=1e-9, abs_tol=1e-12)
    return old == new


def foreign_files(out_dir: str | os.PathLike) -> str | None:
    """Why ``out_dir`` is not a folder to pick into: it holds a ``picks.csv`` or ``command.json`` that
    a pick run would replace but that no pick run wrote (``--out .`` beside another tool's picks.csv).

    None when it holds neither, or when its run record is a pick run's (``pick`` or ``relion``).
    """
    out_dir = Path(out_dir)
    found = [name for name in (RUN_RECORD, "picks.csv") if (out_dir / name).is_file()]
    if not found:
        return None
    try:
        record = RunRecord.read(out_dir)
    except HydraPickerError as exc:
        return str(exc)
    if record is not None and record.verb in ("pick", "relion"):
        return None
    files = " and ".join(found)
    if record is None:
        return f"{out_dir}: holds a {files} that no pick run wrote (there is no run record)"
    return f"{out_dir}: holds the {files} of a hydrapicker {record.verb} run, not of a pick run"


def picking_changes(out_dir: str | os.PathLike, options: Mapping[str, Any]) -> list[str]:
    """How ``options`` (a new picking run's record options) differ from the picks already in ``out_dir``.

    Empty when ``out_dir`` holds no picks or no record, or agrees. The threshold compared is the
    one the files are at (:func:`current_threshold`: ``threshold --set`` moves it). Options an
    older record lacks are not compared. Each change reads ``--flag OLD before, NEW now``.
    """
    out_dir = Path(out_dir)
    if not tables(out_dir / "csv"):
        return []
    record = RunRecord.read(out_dir)
    if record is None or record.verb not in ("pick", "relion"):
        return []
    old = dict(record.options)
    if "threshold" in old:
        old["threshold"] = current_threshold(out_dir)
    if "fixed_diameter" in old and "correct_size" not in old:  # records before hydrapicker-run/2
        old["correct_size"] = not old["fixed_diameter"]
    changes = []
    for key, flag in PICKING_OPTIONS.items():
        before, now = old.get(key), _plain(options.get(key))
        if key in old and key in options and not _same(key, before, now):
            if key in _NEGATED_FLAGS:
                before, now = ("not given" if v else "given" for v in (before, now))
            changes.append(f"{flag} {before} before, {now} now")
    return changes


def output_paths(out_dir: str | os.PathLike, stem: str, formats: Sequence[str]) -> dict[str, Path]:
    """Per-micrograph coordinate files: ``{format: OUT/<format>/<stem><suffix>}``; CSV always."""
    out_dir = Path(out_dir)
    return {fmt: out_dir / fmt / f"{stem}{COORDINATE_FORMATS[fmt]}" for fmt in dict.fromkeys([*formats, "csv"])}


def candidate_paths(out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """``OUT/candidates/<stem>.csv`` (every candidate, CSV) and ``<stem>.json`` (its box size and micrograph shape)."""
    folder = Path(out_dir) / "candidates"
    return folder / f"{stem}.csv", folder / f"{stem}.json"


def read_sidecar(path: str | os.PathLike) -> tuple[float | None, tuple[int, int] | None]:
    """``(box_size, shape)`` from a ``candidates/<stem>.json``; each may be null (unknown).

    Raises:
        HydraPickerError: missing, not JSON, or fields of the wrong kind; names the file and says how to mend it.
    """
    path = Path(path)
    mend = f"pick {path.stem} again with --overwrite"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HydraPickerError(f"{path}: missing or unreadable ({exc}); {mend}") from exc
    if not isinstance(info, dict):
        raise HydraPickerError(
            f"{path}: expected a JSON object with box_size and shape, got {type(info).__name__}; {mend}"
        )
    box, shape = info.get("box_size"), info.get("shape")
    if box is not None and not (
        isinstance(box, (int, float)) and not isinstance(box, bool) and math.isfinite(box) and box > 0
    ):
        raise HydraPickerError(f"{path}: box_size must be a positive number of px, got {box!r}; {mend}")
    if shape is not None and not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise HydraPickerError(f"{path}: shape must be [rows, cols], got {shape!r}; {mend}")
    return (None if box is None else float(box)), (None if shape is None else (shape[0], shape[1]))


def expected_outputs(
    out_dir: str | os.PathLike, stem: str, formats: Sequence[str], overlay_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Every file :func:`pick_files` writes for one micrograph: all there means it is done."""
    files = [*output_paths(out_dir, stem, formats).values(), *candidate_paths(out_dir, stem)]
    return files + ([Path(overlay_dir) / f"{stem}.png"] if overlay_dir is not None else [])


def tables(folder: str | os.PathLike) -> list[Path]:
    """The ``*.csv`` files of ``OUT/csv`` or ``OUT/candidates``, sorted, hidden ones left out: those are
    a writer's temporaries (``.<stem>.<random>.tmp.csv``), incomplete, or left by a killed run."""
    return sorted(p for p in Path(folder).glob("*.csv") if not p.name.startswith("."))


def check_outputs_apart(
    out_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    formats: Sequence[str],
    overlay_dir: str | os.PathLike | None = None,
) -> None:
    """Refuse a run whose outputs would land on one of its micrographs (``--overlay`` into a folder of PNGs).

    Only the folders that hold micrographs are looked at file by file, so a run of thousands costs
    a handful of ``realpath`` calls.
    """
    out_dir = Path(out_dir)
    held = {os.path.dirname(os.path.realpath(p)) for p in paths}
    folders = [out_dir, out_dir / "candidates", *(out_dir / fmt for fmt in [*formats, "csv"])]
    folders += [Path(overlay_dir)] if overlay_dir is not None else []
    if not any(os.path.realpath(folder) in held for folder in folders):
        return
    outputs = [out_dir / "picks.csv", out_dir / RUN_RECORD, out_dir / THRESHOLD_RECORD]
    for path in paths:
        outputs += expected_outputs(out_dir, micrograph_stem(path), formats, overlay_dir)
    refuse_overwriting_inputs(outputs, paths, "pick output")


def rebuild_picks_csv(out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/picks.csv`` (micrograph,x,y,score) from every ``out_dir/csv/*.csv``, atomically.

    The per-micrograph files are ours, with one header, so their rows are joined as text:
    parsing every file again after each batch of ``pick --watch`` grew with the folder. Hidden files are another writer's temporary files, not yet complete.
    """
    out_dir = Path(out_dir)
    target = out_dir / "picks.csv"
    paths = tables(out_dir / "csv")
    header = "micrograph,x,y,score\n"
    texts = [path.read_text(encoding="utf-8") for path in paths]
    if all(text.startswith(header) and text.endswith("\n") for text in texts):
        atomic_write_text(target, header + "".join(text[len(header) :] for text in texts))
    else:  # written by something else: parse and write anew
        write_picks(target, [p for path in paths for p in read_picks(path, "csv").values()], "csv")
    return target


def recorded_threshold(out_dir: str | os.PathLike) -> float | None:
    """The threshold last set with ``threshold --set`` (``OUT/threshold.json``), if any.

    ``pick`` into ``OUT`` without ``--threshold`` uses it, and a running ``pick --watch``
    switches to it when it changes, so micrographs picked later match the re-written ones.
    """
    try:
        return float(json.loads((Path(out_dir) / THRESHOLD_RECORD).read_text(encoding="utf-8"))["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def current_threshold(out_dir: str | os.PathLike) -> float | None:
    """The threshold ``OUT``'s coordinate files are at: ``threshold.json``, else the run record's threshold."""
    recorded = recorded_threshold(out_dir)
    if recorded is not None:
        return recorded
    try:
        record = RunRecord.read(out_dir)
    except HydraPickerError:
        return None
    return None if record is None else record.threshold
