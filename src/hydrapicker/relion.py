"""RELION 5 External job: pick the micrographs of a RELION micrographs STAR file, hand the coordinates back to RELION.

RELION's External job (``src/pipeline_jobs.cpp``, ``RelionJob::getCommandsExternalJob``) runs
``EXECUTABLE --o External/jobNNN/ --in_mics CtfFind/job003/micrographs_ctf.star`` followed by
``--LABEL VALUE`` for each parameter filled in on its Params tab, ``--j THREADS`` and the
"additional arguments", from the project folder. What it expects back, all inside the job folder:

- ``RELION_OUTPUT_NODES.star``: block ``data_output_nodes`` with ``_rlnPipeLineNodeName`` and
  ``_rlnPipeLineNodeTypeLabel`` (``PipeLine::getOutputNodesFromStarFile`` in
  ``src/pipeliner.cpp`` reads exactly these); the node type of picked coordinates in RELION 5 is
  ``MicrographCoordsGroup.star.relion.autopick`` (``LABEL_AUTOPICK_COORDS``, ``src/pipeline_jobs.h``).
- that node, ``autopick.star``: block ``data_coordinate_files`` with ``_rlnMicrographName`` (the
  name exactly as the micrographs STAR spells it) and ``_rlnMicrographCoordinates`` (a per-micrograph
  coordinate STAR file). Extract passes it as ``--coord_list``, and ``relion_preprocess`` maps each
  micrograph name to its file (``src/preprocessing.cpp``). Extract switches to the pre-4.0
  ``--coord_dir/--coord_suffix`` scheme when the node's name contains ``coords_suffix``, so it must not.
- the per-micrograph files: a ``data_`` block with ``_rlnCoordinateX`` / ``_rlnCoordinateY``
  (column / row of the micrograph as stored, our convention) and ``_rlnAutopickFigureOfMerit``,
  which :func:`hydrapicker.picking.runner.pick_files` writes as ``OUT/star/<stem>.star``.
- ``RELION_JOB_EXIT_SUCCESS`` or ``RELION_JOB_EXIT_FAILURE``, an empty file, when done; and when
  the user aborts the job, RELION leaves ``RELION_JOB_ABORT_NOW`` in the job folder and waits for
  ``RELION_JOB_EXIT_ABORTED`` (``src/pipeline_control.h``).

The pixel size of each micrograph is ``_rlnMicrographPixelSize`` of its optics group
(``data_optics``); micrograph paths are relative to the project folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pandas as pd
import starfile

from hydrapicker.errors import HydraPickerError
from hydrapicker.io.micrograph import micrograph_stem
from hydrapicker.io.run_folder import output_paths
from hydrapicker.io.star import write_star
from hydrapicker.picking.picker import Picker, PickSettings
from hydrapicker.picking.runner import PickReport, pick_files

__all__ = [
    "COORDINATE_LIST",
    "COORDINATES_NODE_TYPE",
    "JobAborted",
    "OUTPUT_NODES",
    "RelionMicrograph",
    "mark_job_finished",
    "read_micrographs_star",
    "run_external_job",
    "write_coordinate_list",
    "write_output_nodes",
]

#: The coordinate-list node the job writes (the name RELION's own AutoPick job uses).
COORDINATE_LIST = "autopick.star"

#: RELION 5's node type label of picked coordinates (``LABEL_AUTOPICK_COORDS``).
COORDINATES_NODE_TYPE = "MicrographCoordsGroup.star.relion.autopick"

#: The file through which an External job declares its output nodes (``RELION_OUTPUT_NODES``).
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"

#: Exit markers by outcome, and the file through which RELION asks a running job to stop.
_MARKERS = {
    "success": "RELION_JOB_EXIT_SUCCESS",
    "failure": "RELION_JOB_EXIT_FAILURE",
    "aborted": "RELION_JOB_EXIT_ABORTED",
}
_ABORT_NOW = "RELION_JOB_ABORT_NOW"


class JobAborted(HydraPickerError):
    """RELION asked the job to stop (``RELION_JOB_ABORT_NOW``); the micrographs in flight were written."""


@dataclass(frozen=True)
class RelionMicrograph:
    """One row of a RELION micrographs STAR file.

    Attributes:
        name: ``_rlnMicrographName`` exactly as written (RELION matches coordinates on it).
        path: the micrograph file, ``name`` resolved against the project folder.
        pixel_size: ``_rlnMicrographPixelSize`` of its optics group (Å/px), or ``None`` when the
            file has no optics table (the MRC header is used then).
    """

    name: str
    path: Path
    pixel_size: float | None


def read_micrographs_star(path: str | os.PathLike, project_dir: str | os.PathLike = ".") -> list[RelionMicrograph]:
    """The micrographs of a RELION 3.1+ micrographs STAR file (``data_optics`` + ``data_micrographs``).

    Raises:
        HydraPickerError: missing or unreadable file, no ``data_micrographs`` block or
            ``_rlnMicrographName`` column, an optics group that ``data_optics`` does not list, or a
            pixel size that is not a positive number; the message names the file and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise HydraPickerError(f"{path}: no such micrographs STAR file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed input
        raise HydraPickerError(f"{path}: not a readable STAR file ({type(exc).__name__}: {exc})") from exc
    micrographs = blocks.get("micrographs")
    if not isinstance(micrographs, pd.DataFrame) or "rlnMicrographName" not in micrographs.columns:
        names = ", ".join(f"data_{b}" for b in blocks) or "none"
        raise HydraPickerError(f"{path}: no data_micrographs table with _rlnMicrographName (blocks: {names})")
    pixel_sizes = _optics_pixel_sizes(path, blocks.get("optics"))
    out = []
    for row, (name, group) in enumerate(
        zip(micrographs["rlnMicrographName"].astype(str), _column(micrographs, "rlnOpticsGroup")), start=1
    ):
        if pixel_sizes and group not in pixel_sizes:
            raise HydraPickerError(f"{path}: data_micrographs row {row}: _rlnOpticsGroup {group} is not in data_optics")
        out.append(RelionMicrograph(name, Path(project_dir) / name, pixel_sizes.get(group)))
    if not out:
        raise HydraPickerError(f"{path}: data_micrographs lists no micrographs")
    return out


def _column(frame, column: str) -> list:
    return [str(v) for v in frame[column]] if column in frame.columns else [None] * len(frame)


def _optics_pixel_sizes(path: Path, optics) -> dict[str, float]:
    """``{optics group: Å/px}`` from ``data_optics`` (empty when the file has none)."""
    if optics is None:
        return {}
    if isinstance(optics, dict):
        optics = pd.DataFrame({k: [v] for k, v in optics.items()})
    for column in ("rlnOpticsGroup", "rlnMicrographPixelSize"):
        if column not in optics.columns:
            raise HydraPickerError(f"{path}: data_optics has no _{column} column")
    sizes = {}
    for group, value in zip(optics["rlnOpticsGroup"].astype(str), optics["rlnMicrographPixelSize"]):
        size = pd.to_numeric(value, errors="coerce")
        if not (size > 0):
            raise HydraPickerError(f"{path}: data_optics group {group}: _rlnMicrographPixelSize is {value!r}")
        sizes[group] = float(size)
    return sizes


def write_coordinate_list(path: str | os.PathLike, entries: Sequence[tuple[str, str]]) -> None:
    """RELION's two-column list ``data_coordinate_files``: (micrograph name, its coordinate STAR file)."""
    if "coords_suffix" in Path(path).name:
        raise HydraPickerError(f"{path}: RELION's Extract reads a name with 'coords_suffix' as the old suffix scheme")
    write_star(
        path,
        {
            "coordinate_files": pd.DataFrame(
                {"rlnMicrographName": [m for m, _ in entries], "rlnMicrographCoordinates": [c for _, c in entries]}
            )
        },
    )


def write_output_nodes(job_dir: str | os.PathLike, nodes: Sequence[tuple[str, str]]) -> Path:
    """``job_dir/RELION_OUTPUT_NODES.star``: the (node file, node type label) pairs the job made."""
    path = Path(job_dir) / OUTPUT_NODES
    write_star(
        path,
        {
            "output_nodes": pd.DataFrame(
                {"rlnPipeLineNodeName": [n for n, _ in nodes], "rlnPipeLineNodeTypeLabel": [t for _, t in nodes]}
            )
        },
    )
    return path


def mark_job_finished(job_dir: str | os.PathLike, outcome: Literal["success", "failure", "aborted"]) -> Path:
    """Leave RELION's exit marker for ``outcome`` (success, failure, aborted) in ``job_dir``, and
    remove the other markers (from an earlier run) and a served abort request."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    for name in (*_MARKERS.values(), _ABORT_NOW):
        (job_dir / name).unlink(missing_ok=True)
    (job_dir / _MARKERS[outcome]).touch()
    return job_dir / _MARKERS[outcome]


def run_external_job(
    in_mics: str | os.PathLike,
    job_dir: str | os.PathLike,
    make_picker: Callable[[PickSettings], Picker],
    settings: PickSettings,
    *,
    project_dir: str | os.PathLike = ".",
    workers: int = 2,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> PickReport:
    """Pick every micrograph of ``in_mics`` into ``job_dir`` and write the files RELION reads.

    ``job_dir`` is as RELION gives it (``External/job005/``, relative to ``project_dir``), and
    the paths written into the STAR files start with it. Each optics group is picked at its own
    pixel size unless ``settings.size.pixel_size`` is set; ``make_picker`` builds the picker for one
    group's settings. Micrographs that cannot be picked are left out of ``autopick.star`` and
    listed in the returned report; no micrograph picked at all is a HydraPickerError, and an
    abort request from RELION is :class:`JobAborted`. Exit markers are the caller's
    (:func:`mark_job_finished`), so that any error can mark failure.
    """
    micrographs = read_micrographs_star(Path(project_dir) / in_mics, project_dir)
    stems: dict[str, str] = {}
    for mic in micrographs:
        stem = micrograph_stem(mic.path)
        if stem in stems and stems[stem] != mic.name:
            raise HydraPickerError(
                f"{in_mics}: {stems[stem]} and {mic.name} have the same file name: their picks would collide"
            )
        stems[stem] = mic.name
    out_dir = Path(project_dir) / job_dir
    groups: dict[float | None, list[RelionMicrograph]] = {}
    for mic in micrographs:
        given = settings.size.pixel_size if settings.size is not None else None
        groups.setdefault(given or mic.pixel_size, []).append(mic)
    report = PickReport()

    def aborted() -> bool:
        return (out_dir / _ABORT_NOW).exists()

    for pixel_size, members in groups.items():
        size = replace(settings.size, pixel_size=pixel_size) if settings.size is not None else None
        picker = make_picker(replace(settings, size=size))
        paths = list(dict.fromkeys(m.path for m in members))
        picker.check_paths(paths)
        part = pick_files(
            paths,
            out_dir,
            picker,
            ("star",),
            workers=workers,
            overwrite=overwrite,
            progress=False,
            log=log,
            stop=aborted,
        )
        report.add(part)
        report.seconds += part.seconds
        if aborted():
            raise JobAborted(f"{job_dir}: aborted by RELION after {len(report.picked)} micrograph(s)")
    done = set(report.picked) | set(report.skipped)
    if not done:
        raise HydraPickerError(f"{in_mics}: none of its {len(micrographs)} micrographs could be picked")
    entries = []
    for mic in micrographs:
        stem = micrograph_stem(mic.path)
        if stem in done:
            star = output_paths(Path(job_dir), stem, ("star",))["star"]
            entries.append((mic.name, star.as_posix()))
    node = (Path(job_dir) / COORDINATE_LIST).as_posix()
    write_coordinate_list(Path(project_dir) / node, entries)
    write_output_nodes(out_dir, [(node, COORDINATES_NODE_TYPE)])
    return report
