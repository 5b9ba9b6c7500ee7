#!/usr/bin/env python
"""Bring HydraPicker's picks into a cryoSPARC project as an External job (through cryosparc-tools).

Given the cryoSPARC project, a workspace, and the job whose micrographs were picked (its output
of micrographs, e.g. a Patch CTF job's ``exposures``), this creates an External job in the
workspace that takes those micrographs as its input and has one output, ``particles``, with the
``location`` and ``pick_stats`` slots: every pick of ``hydrapicker pick --format cs`` (files
``OUT/cs/*.cs``), each on the connected micrograph of the same name. Connect that output to
Extract From Micrographs.

Names: a micrograph we picked is matched to the connected micrograph whose file stem is the
same, or the same once cryoSPARC's additions are taken off (the ``012345678901234567_`` UID
prefix of imported files, the ``_patch_aligned_doseweighted``-like suffixes of motion
correction). A name that matches none, or several, stops the import before the server is
changed. The picks keep their fractional centres, so micrographs picked binned (or exported
at another size) land at the same place on cryoSPARC's micrographs.

Credentials: cryosparc-tools' own environment variables (CRYOSPARC_BASE_URL, or
CRYOSPARC_MASTER_HOSTNAME and CRYOSPARC_BASE_PORT; CRYOSPARC_EMAIL, CRYOSPARC_PASSWORD), or
--url/--email (the password is read from CRYOSPARC_PASSWORD or asked for).

Example:
  python scripts/cryosparc_import.py picks/cs/*.cs --project P3 --workspace W1 --job J42 --output exposures

--dry-run reads and matches everything (the micrographs of --micrographs-cs, a .cs file the
job's output was exported to) without a server and prints what it would save.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Suffixes cryoSPARC's motion correction adds to a micrograph's name, longest first.
CRYOSPARC_SUFFIXES = (
    "_patch_aligned_doseweighted",
    "_rigid_aligned_doseweighted",
    "_patch_aligned",
    "_rigid_aligned",
    "_doseweighted",
    "_aligned",
)
_UID_PREFIX = re.compile(r"^\d{6,}_")

INPUT_NAME = "micrographs"
OUTPUT_NAME = "particles"
SLOTS = ["location", "pick_stats"]


class ImportError_(Exception):
    """A problem with the inputs, found before the server is changed (one line)."""


def stem(path: str) -> str:
    """The file name of ``path`` without its suffix (``J2/imported/123_a.mrc`` -> ``123_a``)."""
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return name[: name.rfind(".")] if "." in name else name


def name_keys(path: str) -> list[str]:
    """The names a cryoSPARC micrograph answers to: its stem, without the UID prefix, without motion-correction suffixes."""
    keys = [stem(path)]
    bare = _UID_PREFIX.sub("", keys[0])
    keys.append(bare)
    for suffix in CRYOSPARC_SUFFIXES:
        if bare.endswith(suffix):
            keys.append(bare[: -len(suffix)])
            break
    return list(dict.fromkeys(keys))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def match_micrographs(our_names: Sequence[str], micrographs) -> dict[str, int]:
    """``{our micrograph name: row of micrographs}``; ``micrographs`` a cryosparc-tools Dataset with ``micrograph_blob/path``.

    An exact stem wins over a key with cryoSPARC's additions taken off. Raises :class:`ImportError_` naming
    the first of our micrographs that matches none or several.
    """
    if "micrograph_blob/path" not in micrographs:
        raise ImportError_("the connected micrographs have no micrograph_blob/path: connect an output of micrographs")
    by_key: list[dict[str, list[int]]] = [{}, {}, {}]
    for row, path in enumerate(micrographs["micrograph_blob/path"]):
        for level, key in enumerate(name_keys(_text(path))):
            by_key[min(level, 2)].setdefault(key, []).append(row)
    matched, missing = {}, []
    for name in our_names:
        for level in range(3):
            rows = sorted(set(by_key[level].get(name, [])))
            if len(rows) > 1:
                paths = ", ".join(_text(micrographs["micrograph_blob/path"][r]) for r in rows[:3])
                raise ImportError_(f"micrograph {name!r} matches {len(rows)} connected micrographs ({paths})")
            if rows:
                matched[name] = rows[0]
                break
        else:
            missing.append(name)
    if missing:
        raise ImportError_(
            f"{len(missing)} of {len(our_names)} picked micrograph(s) match no connected micrograph, e.g. {missing[0]!r} "
            f"(connected: {len(micrographs)}, e.g. {_text(micrographs['micrograph_blob/path'][0]) if len(micrographs) else 'none'})"
        )
    return matched


def read_our_picks(paths: Sequence[Path]):
    """Our ``.cs`` files as one cryosparc-tools Dataset (``location/*``, ``pick_stats/ncc_score``)."""
    from cryosparc.dataset import Dataset

    if not paths:
        raise ImportError_("no .cs files given (hydrapicker pick --format cs writes OUT/cs/*.cs)")
    parts = []
    for path in paths:
        try:
            parts.append(Dataset.load(str(path)))
        except Exception as exc:  # cryosparc-tools raises several types on a bad file
            raise ImportError_(f"{path}: not a readable .cs file ({exc})") from exc
    for path, part in zip(paths, parts):
        for field in ("location/micrograph_path", "location/center_x_frac", "location/center_y_frac"):
            if len(part) and field not in part:
                raise ImportError_(f"{path}: no {field} field (not written by hydrapicker pick --format cs?)")
    return Dataset.append(*parts, repeat_allowed=True) if len(parts) > 1 else parts[0]


def particles_on(ours, micrographs, fields: Sequence[tuple] | None = None):
    """Our picks as particles on the connected ``micrographs``: a cryosparc-tools Dataset with the ``location``
    and ``pick_stats`` fields (``fields``: the output's fields as the server lists them, else the usual ones)."""
    from cryosparc.dataset import Dataset

    names = [stem(_text(p)) for p in ours["location/micrograph_path"]]
    matched = match_micrographs(list(dict.fromkeys(names)), micrographs)
    rows = np.array([matched[n] for n in names], dtype=np.int64)
    fields = list(fields) if fields is not None else _PARTICLE_FIELDS
    out = Dataset.allocate(len(ours), fields)
    out["location/micrograph_uid"] = np.asarray(micrographs["uid"])[rows]
    out["location/micrograph_path"] = [_text(micrographs["micrograph_blob/path"][r]) for r in rows]
    shapes = np.asarray(micrographs["micrograph_blob/shape"]) if "micrograph_blob/shape" in micrographs else None
    if shapes is not None and "location/micrograph_shape" in out:
        out["location/micrograph_shape"] = shapes[rows]
    for source, target in (
        ("micrograph_blob/psize_A", "location/micrograph_psize_A"),
        ("ctf/exp_group_id", "location/exp_group_id"),
        ("micrograph_blob/exp_group_id", "location/exp_group_id"),
    ):
        if source in micrographs and target in out:
            out[target] = np.asarray(micrographs[source])[rows]
    out["location/center_x_frac"] = ours["location/center_x_frac"]
    out["location/center_y_frac"] = ours["location/center_y_frac"]
    if "pick_stats/ncc_score" in ours:
        out["pick_stats/ncc_score"] = ours["pick_stats/ncc_score"]
    return out


#: The particle fields of the ``location`` and ``pick_stats`` slots (cryoSPARC 4), when no server lists them.
_PARTICLE_FIELDS = [
    ("location/micrograph_uid", "<u8"),
    ("location/exp_group_id", "<u4"),
    ("location/micrograph_path", "O"),
    ("location/micrograph_shape", "<u4", (2,)),
    ("location/micrograph_psize_A", "<f4"),
    ("location/center_x_frac", "<f4"),
    ("location/center_y_frac", "<f4"),
    ("pick_stats/ncc_score", "<f4"),
    ("pick_stats/power", "<f4"),
    ("pick_stats/template_idx", "<u4"),
    ("pick_stats/angle_rad", "<f4"),
]


def import_picks(cs, project_uid: str, workspace_uid: str, job_uid: str, output: str, ours, title: str) -> str:
    """Create the External job on ``cs`` (a cryosparc-tools ``CryoSPARC``), save the particles; returns its UID.

    Nothing is saved when the names do not match: the job is then marked failed with the reason.
    """
    project = cs.find_project(project_uid)
    job = project.create_external_job(workspace_uid, title=title)
    job.connect(INPUT_NAME, job_uid, output, slots=["micrograph_blob"])
    job.add_output("particle", OUTPUT_NAME, slots=SLOTS)
    with job.run():  # marks it failed with the error if anything below raises
        micrographs = job.load_input(INPUT_NAME, ["micrograph_blob"])
        template = job.alloc_output(OUTPUT_NAME, len(ours))
        particles = particles_on(ours, micrographs, template.descr(exclude_uid=True))
        particles["uid"] = template["uid"]
        job.save_output(OUTPUT_NAME, particles)
    return job.uid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cs", nargs="+", type=Path, help="our .cs files (OUT/cs/*.cs), or OUT itself")
    parser.add_argument("--project", required=True, help="cryoSPARC project UID, e.g. P3")
    parser.add_argument("--workspace", required=True, help="workspace UID for the new job, e.g. W1")
    parser.add_argument("--job", required=True, help="UID of the job whose micrographs were picked, e.g. J42")
    parser.add_argument("--output", default="exposures", help="that job's output of micrographs (default: %(default)s)")
    parser.add_argument("--title", default="HydraPicker picks", help="the External job's title (default: %(default)s)")
    parser.add_argument(
        "--url", help="cryoSPARC base URL (default: CRYOSPARC_BASE_URL / _MASTER_HOSTNAME + _BASE_PORT)"
    )
    parser.add_argument(
        "--email", default=os.getenv("CRYOSPARC_EMAIL"), help="cryoSPARC user (default: CRYOSPARC_EMAIL)"
    )
    parser.add_argument("--dry-run", action="store_true", help="match against --micrographs-cs without a server")
    parser.add_argument("--micrographs-cs", type=Path, help="with --dry-run: the job's micrographs exported as .cs")
    args = parser.parse_args(argv)
    paths = [p for item in args.cs for p in (sorted((item / "cs").glob("*.cs")) if item.is_dir() else [item])]
    try:
        ours = read_our_picks([p for p in paths if not p.name.startswith(".")])
        if args.dry_run:
            from cryosparc.dataset import Dataset

            if args.micrographs_cs is None:
                raise ImportError_("--dry-run needs --micrographs-cs (the job's micrographs exported as .cs)")
            particles = particles_on(ours, Dataset.load(str(args.micrographs_cs)))
            mics = len(set(particles["location/micrograph_uid"].tolist()))
            print(f"would save {len(particles)} particles on {mics} micrograph(s) as {args.project} {args.workspace}")
            return 0
        from cryosparc.tools import CryoSPARC

        options = {"base_url": args.url} if args.url else {}
        password = os.getenv("CRYOSPARC_PASSWORD") or getpass.getpass(f"cryoSPARC password for {args.email}: ")
        cs = CryoSPARC(**options, email=args.email, password=password)
        uid = import_picks(cs, args.project, args.workspace, args.job, args.output, ours, args.title)
    except ImportError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(ours)} particles saved as {args.project} {uid} output {OUTPUT_NAME!r} (slots {', '.join(SLOTS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
