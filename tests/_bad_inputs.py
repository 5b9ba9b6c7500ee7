"""Every bad input of DESIGN's *Bad input* list, for every verb it applies to, as runnable cases.

Each :class:`Case` builds its inputs in an empty folder (a good micrograph ``m0`` with its labels
beside the bad thing, which is always about ``m1``), runs ``hydrapicker VERB ...`` in-process and
records the exit status, what was printed on stderr and whether the output folder holds anything
partial (:func:`partial_outputs`). tests/test_reliability_bad_input.py asserts on the results;
scripts/bad_input_table.py writes them to docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _synthetic import gaussian_spots

__all__ = ["CASES", "Case", "Outcome", "disk_full", "partial_outputs", "run_case"]

SHAPE = (160, 160)
#: Particle centres (x, y) on every synthetic micrograph: 40-px particles at 1 Å/px.
CENTRES = np.array(
    [[30.0, 30.0], [80.0, 40.0], [130.0, 35.0], [40.0, 90.0], [100.0, 100.0], [60.0, 135.0], [125.0, 130.0]]
)
STRUCTURE = Path(__file__).resolve().parents[1] / "data" / "structures" / "1hvr.pdb.gz"


def _image(seed: int) -> np.ndarray:
    return gaussian_spots(SHAPE, CENTRES, 8, contrast=-1.0, noise=0.3, seed=seed)


def _mrc(path: Path, data: np.ndarray | None = None, seed: int = 0) -> None:
    from hydrapicker.io import write_mrc

    write_mrc(path, _image(seed) if data is None else data, pixel_size=1.0)


def _labels(path: Path, stem: str, centres: np.ndarray = CENTRES) -> None:
    path.write_text("micrograph,x,y,score\n" + "".join(f"{stem},{x:g},{y:g},1\n" for x, y in centres))


def _checkpoint(path: Path) -> None:
    import torch
    from _synthetic import write_checkpoint

    from hydrapicker.model import HydraPicker
    from hydrapicker.presets import get_preset

    torch.manual_seed(0)
    write_checkpoint(path, HydraPicker(get_preset("tiny")))


# --- the bad things (each makes m1's micrograph, m1's labels, the project or the checkpoint bad) ---


def _no_file(path: Path) -> None:
    pass


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated_mrc(path: Path) -> None:
    _mrc(path, seed=1)
    path.write_bytes(path.read_bytes()[: 1024 + 4 * SHAPE[0] * SHAPE[1] // 2])


def _text_as_mrc(path: Path) -> None:
    path.write_text("this is a text file, not an MRC micrograph\n" * 40)


def _nan_pixels(path: Path) -> None:
    data = _image(1)
    data[10, 20], data[50, 60] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's "Data array contains NaN values": we know
        _mrc(path, data)


def _constant(path: Path) -> None:
    _mrc(path, np.full(SHAPE, 0.5, np.float32))


def _movie(path: Path) -> None:
    import mrcfile

    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.stack([_image(1), _image(2), _image(3)]))


def _truncated_png(path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(_image(1) + 1.5, 0, 3) * 80).astype(np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


#: name -> (file suffix of m1's micrograph, builder)
MICROGRAPH_ITEMS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "missing micrograph file": (".mrc", _no_file),
    "empty micrograph file (0 bytes)": (".mrc", _empty),
    "truncated MRC (half its data)": (".mrc", _truncated_mrc),
    "non-MRC content in a .mrc file": (".mrc", _text_as_mrc),
    "NaN/Inf pixels": (".mrc", _nan_pixels),
    "constant image": (".mrc", _constant),
    "3-frame movie instead of a micrograph": (".mrc", _movie),
    "truncated PNG": (".png", _truncated_png),
}

#: name -> text of m1's CSV labels (None: no file)
COORDINATE_ITEMS: dict[str, str | None] = {
    "missing coordinate file": None,
    "empty coordinate file (0 bytes)": "",
    "coordinate file with a header and no rows": "micrograph,x,y,score\n",
    "malformed coordinate file (text in a number column)": "micrograph,x,y,score\nm1,30,abc,1\n",
    "coordinate file without x/y columns": "micrograph,col,row\nm1,30,40\n",
    "NaN coordinate": "micrograph,x,y,score\nm1,30,nan,1\n",
    "binary garbage as a coordinate file": "\x00\x01\x02\xff garbage \x00",
    "coordinates outside the micrograph": "micrograph,x,y,score\nm1,30,40,1\nm1,500,40,1\n",
}

PROJECT_FIELDS = ("name", "micrographs", "coordinates", "pixel_size", "diameter")


# --- running a case --------------------------------------------------------------------


@dataclass
class Outcome:
    """What one case gave: exit status, stderr lines, stdout, and any partial output files."""

    code: int
    stderr: list[str]
    stdout: str
    partial: list[str]
    root: Path

    def message(self) -> str:
        """The line that explains the failure (for pick, the line listing the micrograph), paths shortened."""
        lines = [line.strip() for line in self.stderr if line.strip()]
        errors = [line for line in lines if ": error:" in line]
        listed = [line for line in lines if line.startswith("skipped ")]
        chosen = errors[-1] if errors else (listed[-1] if listed else (lines[-1] if lines else ""))
        return chosen.replace(str(self.root) + os.sep, "").replace(str(self.root), ".")


@dataclass(frozen=True)
class Case:
    """One bad input given to one verb.

    ``build(root)`` makes the inputs in ``root`` and returns the command line (without
    ``hydrapicker``) and the output paths it may write. ``expect``: ``"error"`` (non-zero exit,
    one line naming ``names``), ``"listed"`` (pick: the micrograph is listed as not picked, the
    others are picked, exit 0) or ``"accepted"`` (not an error for this verb; ``why`` says why).
    """

    verb: str
    item: str
    build: Callable[[Path], tuple[list[str], list[Path]]]
    expect: str = "error"
    names: str = ""
    why: str = ""
    pinned_by: str = ""
    slow: bool = False  # trains for an epoch before anything fails (or nothing does)
    wrap: Callable[[], contextlib.AbstractContextManager] | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return f"{self.verb}: {self.item}"


def partial_outputs(paths: list[Path]) -> list[str]:
    """Files under ``paths`` that are not complete: temporaries left behind, or files that do not parse."""
    import torch
    from PIL import Image

    from hydrapicker.errors import HydraPickerError
    from hydrapicker.io import read_micrograph, read_picks
    from hydrapicker.io.coordinates import guess_format

    files = [
        p
        for root in paths
        for p in ([root] if root.is_file() else root.rglob("*") if root.is_dir() else [])
        if p.is_file()
    ]
    links = [p for root in paths if root.is_dir() for p in root.rglob("*") if p.is_symlink()]
    bad = [f"{path.name}: a symbolic link (to {os.readlink(path)})" for path in links]
    for path in files:
        if path.is_symlink():
            continue
        if path.name.startswith(".") and ".tmp" in path.name:
            bad.append(f"{path.name}: temporary left behind")
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
            elif path.suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=False)
            elif path.suffix in (".mrc",):
                read_micrograph(path)
            elif path.suffix in (".star", ".box", ".cbox", ".cs", ".csv", ".txt") and path.stat().st_size:
                guess_format(path)
                if path.name not in ("log.csv",):
                    read_picks(path)
        except (HydraPickerError, OSError, ValueError, RuntimeError, EOFError) as exc:
            if "empty coordinate file" not in str(exc) and "no such" not in str(exc):
                bad.append(f"{path.name}: {exc}")
    return bad


def run_case(case: Case, root: Path) -> Outcome:
    """Build the case's inputs in ``root`` and run its command in-process."""
    from hydrapicker.cli import main

    root.mkdir(parents=True, exist_ok=True)
    argv, outputs = case.build(root)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with case.wrap() if case.wrap is not None else contextlib.nullcontext():
                try:
                    code = main([case.verb, *map(str, argv)])
                except SystemExit as exc:  # argparse usage errors
                    code = int(exc.code or 0)
    finally:
        os.chdir(cwd)
    return Outcome(code, err.getvalue().splitlines(), out.getvalue(), partial_outputs(outputs), root)


@contextlib.contextmanager
def disk_full(after: int = 0) -> Iterator[None]:
    """Every atomic write but the first ``after`` goes to ``/dev/full``: the kernel answers ENOSPC
    on write, as a full disk does.

    The temporary file each writer is given becomes a symlink to /dev/full, so every library
    (open, PIL, mrcfile, torch, numpy, starfile, matplotlib) meets the real error at its own write.
    """
    import hydrapicker.io.files as files

    real = files._create_temporary
    writes = [0]

    def create_temporary(path):
        name = real(path)
        writes[0] += 1
        if writes[0] <= after:
            return name
        os.unlink(name)
        os.symlink("/dev/full", name)
        return name

    files._create_temporary = create_temporary
    try:
        yield
    finally:
        files._create_temporary = real


# --- the verbs' command lines around a bad thing ---------------------------------------------


def _scene(root: Path, mic_suffix: str = ".mrc") -> None:
    """m0: a good micrograph with labels; m1's labels (its micrograph is the case's).

    Projects validate on m0 and train on m1 alone, so training reads the bad m1 first.
    """
    _mrc(root / "m0.mrc", seed=0)
    _labels(root / "m0.csv", "m0")
    _labels(root / "m1.csv", "m1")


def _project(root: Path, drop: str | None = None, **changes: str) -> Path:
    fields = {
        "name": '"toy"',
        "micrographs": '"m*"',
        "coordinates": '"*.csv"',
        "pixel_size": "1.0",
        "diameter": "40.0",
        "val": '["m0"]',
    }
    fields.update(changes)
    fields.pop(drop, None)
    path = root / "project.toml"
    path.write_text("[[dataset]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()))
    return path


_TRAIN = [
    "--out",
    "out",
    "--preset",
    "tiny",
    "--stage",
    "1",
    "--epochs",
    "1",
    "--batches-per-epoch",
    "1",
    "--val-batches",
    "1",
    "--threads",
    "1",
]
_FINETUNE = [
    "--name",
    "new",
    "--out",
    "new.pt",
    "--diameter-px",
    "40",
    "--epochs",
    "1",
    "--batches-per-epoch",
    "1",
    "--val-batches",
    "1",
    "--threads",
    "1",
]
_PICK = ["--out", "out", "--diameter-px", "40", "--threshold", "0.0"]


def _finetune_outputs(root: Path) -> list[Path]:
    return [root / "new.pt", root / "new.finetune"]


def _micrograph_cases() -> list[Case]:
    cases = []
    for item, (suffix, make) in MICROGRAPH_ITEMS.items():
        bad = f"m1{suffix}"

        def pick(root: Path, make=make, bad=bad) -> tuple[list[str], list[Path]]:
            _scene(root)
            _checkpoint(root / "model.pt")
            make(root / bad)
            return ["m0.mrc", bad, "--model", "model.pt", *_PICK], [root / "out"]

        def train(root: Path, make=make, bad=bad) -> tuple[list[str], list[Path]]:
            _scene(root)
            make(root / bad)
            return [_project(root), *_TRAIN], [root / "out"]

        def finetune(root: Path, make=make, bad=bad) -> tuple[list[str], list[Path]]:
            _scene(root)
            _checkpoint(root / "model.pt")
            make(root / bad)
            return [
                "--model",
                "model.pt",
                "--micrographs",
                "m0.mrc",
                bad,
                "--coords",
                "m0.csv",
                "m1.csv",
                *_FINETUNE,
            ], _finetune_outputs(root)

        pinned = {
            "missing micrograph file": "io/test_micrograph::test_missing_file_names_the_file",
            "truncated MRC (half its data)": "picking/test_picker::test_corrupt_micrograph_is_reported_and_skipped_while_the_others_are_picked",
            "NaN/Inf pixels": "io/test_micrograph::test_nan_pixels_are_refused",
            "constant image": "io/test_micrograph::test_constant_image_is_refused",
        }.get(item, "")
        cases.append(Case("pick", item, pick, expect="listed", names=bad, pinned_by=pinned))
        if item == "missing micrograph file":  # a project names micrographs by a glob

            def train_glob(root: Path) -> tuple[list[str], list[Path]]:
                _scene(root)
                return [_project(root, micrographs='"missing_*.mrc"'), *_TRAIN], [root / "out"]

            cases.append(
                Case(
                    "train",
                    "micrographs glob matching no file",
                    train_glob,
                    names="micrographs",
                    pinned_by="data/test_batches::test_bad_field_error_names_dataset_field_and_value",
                )
            )
        else:
            cases.append(Case("train", item, train, names=bad))
        cases.append(Case("finetune", item, finetune, names=bad))
    return cases


def _coordinate_cases() -> list[Case]:
    cases = []
    for item, text in COORDINATE_ITEMS.items():

        def write(path: Path, text=text) -> None:
            if text is not None:
                path.write_bytes(text.encode("latin-1"))

        def train(root: Path, write=write) -> tuple[list[str], list[Path]]:
            _scene(root)
            _mrc(root / "m1.mrc", seed=1)
            (root / "m1.csv").unlink()
            write(root / "m1.csv")
            return [_project(root), *_TRAIN], [root / "out"]

        def finetune(root: Path, write=write) -> tuple[list[str], list[Path]]:
            _scene(root)
            _mrc(root / "m1.mrc", seed=1)
            _checkpoint(root / "model.pt")
            (root / "m1.csv").unlink()
            write(root / "m1.csv")
            return [
                "--model",
                "model.pt",
                "--micrographs",
                "m0.mrc",
                "m1.mrc",
                "--coords",
                "m0.csv",
                "m1.csv",
                *_FINETUNE,
            ], _finetune_outputs(root)

        def evaluate_picks(root: Path, write=write) -> tuple[list[str], list[Path]]:
            _labels(root / "truth.csv", "m1")
            write(root / "m1.csv")
            return ["m1.csv", "--truth", "truth.csv", "--box", "40", "--json", "scores.json", "--plots", "plots"], [
                root / "scores.json",
                root / "plots",
            ]

        def evaluate_truth(root: Path, write=write) -> tuple[list[str], list[Path]]:
            _labels(root / "picks.csv", "m1")
            write(root / "m1.csv")
            return ["picks.csv", "--truth", "m1.csv", "--box", "40", "--json", "scores.json", "--plots", "plots"], [
                root / "scores.json",
                root / "plots",
            ]

        expect_train, why_train = "error", ""
        if item == "coordinate file with a header and no rows":
            expect_train, why_train = "accepted", "a labelled micrograph with no particle is all background"
        outside = item == "coordinates outside the micrograph"
        if item == "missing coordinate file":
            expect_train, why_train = (
                "error",
                "a micrograph without labels is unlabelled, so no micrograph is left to train on",
            )
        cases.append(
            Case(
                "train",
                item,
                train,
                expect=expect_train,
                names="m1" if not why_train else "train",
                why=why_train,
                slow=expect_train == "accepted",
            )
        )
        cases.append(Case("finetune", item, finetune, names="m1"))
        for role, build in (("picks", evaluate_picks), ("truth", evaluate_truth)):
            expect, why = "error", ""
            if outside:
                expect, why = "accepted", "evaluate reads no micrograph, so it knows no micrograph size"
            elif item == "coordinate file with a header and no rows" and role == "picks":
                expect, why = "accepted", "no picks: AP 0"
            pinned = (
                "io/test_coordinates::test_malformed_content_gives_one_line_naming_file_and_row_or_field"
                if "malformed" in item
                else ""
            )
            names = "m1.csv"
            if item == "coordinate file with a header and no rows":
                names = "'m1'"  # a CSV without rows names no micrograph, so the picks' one has no truth
            cases.append(
                Case("evaluate", f"{item} ({role})", build, expect=expect, names=names, why=why, pinned_by=pinned)
            )
    return cases


def _absent_micrograph_cases() -> list[Case]:
    """A micrograph named in a coordinate file but absent."""

    def train_own_file(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _mrc(root / "m1.mrc", seed=1)
        _labels(root / "m9.csv", "m9")
        return [_project(root), *_TRAIN], [root / "out"]

    def train_one_file(root: Path) -> tuple[list[str], list[Path]]:
        _mrc(root / "m0.mrc", seed=0)
        _mrc(root / "m1.mrc", seed=1)
        rows = [f"{stem},{x:g},{y:g},1\n" for stem in ("m0", "m1", "m9") for x, y in CENTRES]
        (root / "all.csv").write_text("micrograph,x,y,score\n" + "".join(rows))
        return [_project(root, coordinates='"all.csv"'), *_TRAIN], [root / "out"]

    def finetune_own_file(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _checkpoint(root / "model.pt")
        _labels(root / "m9.csv", "m9")
        return [
            "--model",
            "model.pt",
            "--micrographs",
            "m0.mrc",
            "--coords",
            "m0.csv",
            "m9.csv",
            *_FINETUNE,
        ], _finetune_outputs(root)

    def evaluate(root: Path) -> tuple[list[str], list[Path]]:
        _labels(root / "truth.csv", "m1")
        (root / "picks.csv").write_text("micrograph,x,y,score\nm1,30,30,0.9\nm9,30,30,0.8\n")
        return ["picks.csv", "--truth", "truth.csv", "--box", "40", "--json", "scores.json"], [root / "scores.json"]

    item = "micrograph named in a coordinate file but absent"
    return [
        Case(
            "train",
            f"{item} (its own file m9.csv)",
            train_own_file,
            names="m9.csv",
            pinned_by="data/test_batches::test_coordinate_file_without_micrograph_is_an_error",
        ),
        Case(
            "train",
            f"{item} (rows of one CSV for all)",
            train_one_file,
            expect="accepted",
            why="a file for the whole dataset may list more micrographs than the project uses",
            slow=True,
        ),
        Case("finetune", f"{item} (its own file m9.csv)", finetune_own_file, names="m9"),
        Case(
            "evaluate",
            f"{item} (picks name m9, truth has none)",
            evaluate,
            names="m9",
            pinned_by="cli/test_cli_evaluate::test_picks_on_unlabelled_micrograph_fail_in_one_line_and_write_nothing",
        ),
    ]


def _project_cases() -> list[Case]:
    cases = []
    for name in PROJECT_FIELDS:

        def build(root: Path, name=name) -> tuple[list[str], list[Path]]:
            _scene(root)
            _mrc(root / "m1.mrc", seed=1)
            return [_project(root, drop=name), *_TRAIN], [root / "out"]

        cases.append(
            Case(
                "train",
                f"project file missing field {name!r}",
                build,
                names=name,
                pinned_by="data/test_batches::test_missing_field_error_names_project_dataset_and_field",
            )
        )

    def missing(root: Path) -> tuple[list[str], list[Path]]:
        return ["nothere.toml", *_TRAIN], [root / "out"]

    def not_toml(root: Path) -> tuple[list[str], list[Path]]:
        (root / "project.toml").write_text("[[dataset]\nname = toy\n")
        return ["project.toml", *_TRAIN], [root / "out"]

    def negative(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _mrc(root / "m1.mrc", seed=1)
        return [_project(root, pixel_size="-1.0"), *_TRAIN], [root / "out"]

    cases += [
        Case("train", "missing project file", missing, names="nothere.toml"),
        Case("train", "project file that is not TOML", not_toml, names="project.toml"),
        Case("train", "project field with a bad value (pixel_size = -1)", negative, names="pixel_size"),
    ]
    return cases


def _checkpoint_cases() -> list[Case]:
    cases = []
    for item, make in (
        ("missing checkpoint (--model)", _no_file),
        ("checkpoint that is a text file", _text_as_mrc),
        ("truncated checkpoint", None),
    ):

        def model(root: Path, make=make) -> None:
            if make is None:
                _checkpoint(root / "model.pt")
                (root / "model.pt").write_bytes((root / "model.pt").read_bytes()[:3000])
            else:
                make(root / "model.pt")

        def pick(root: Path, model=model) -> tuple[list[str], list[Path]]:
            _scene(root)
            model(root)
            return ["m0.mrc", "--model", "model.pt", *_PICK], [root / "out"]

        def finetune(root: Path, model=model) -> tuple[list[str], list[Path]]:
            _scene(root)
            model(root)
            return [
                "--model",
                "model.pt",
                "--micrographs",
                "m0.mrc",
                "--coords",
                "m0.csv",
                *_FINETUNE,
            ], _finetune_outputs(root)

        def demo(root: Path, model=model) -> tuple[list[str], list[Path]]:
            model(root)
            return ["--model", "model.pt", "--out", "demo"], [root / "demo"]

        for verb, build in (("pick", pick), ("finetune", finetune), ("demo", demo)):
            cases.append(Case(verb, item, build, names="model.pt"))
    return cases


def _simulate_cases() -> list[Case]:
    def model_file(make: Callable[[Path], None]) -> Callable[[Path], tuple[list[str], list[Path]]]:
        def build(root: Path) -> tuple[list[str], list[Path]]:
            make(root / "model.pdb.gz")
            return ["model.pdb.gz", "--out", "sim", "--n-micrographs", "1", "--size", "64", "--quiet"], [root / "sim"]

        return build

    def truncated_gz(path: Path) -> None:
        path.write_bytes(STRUCTURE.read_bytes()[:2000])

    def cut_in_atoms(path: Path) -> None:
        raw = STRUCTURE.read_bytes()
        path.write_bytes(raw[: int(0.6 * len(raw))])

    def text_gz(path: Path) -> None:
        path.write_bytes(gzip.compress(b"this is not an atomic model\n" * 10))

    return [
        Case(
            "simulate",
            "missing atomic model file",
            model_file(_no_file),
            names="model.pdb.gz",
            pinned_by="simulate/test_simulate::test_missing_model_file_names_it",
        ),
        Case("simulate", "empty atomic model file", model_file(_empty), names="model.pdb.gz"),
        Case(
            "simulate", "truncated .pdb.gz (cut in its header records)", model_file(truncated_gz), names="model.pdb.gz"
        ),
        Case("simulate", "truncated .pdb.gz (cut in its atom records)", model_file(cut_in_atoms), names="model.pdb.gz"),
        Case("simulate", "gzipped text that is no atomic model", model_file(text_gz), names="model.pdb.gz"),
    ]


def _output_cases() -> list[Case]:
    """Outputs that cannot be written: the output folder is a file; the disk is full."""

    def blocked(
        build: Callable[[Path], tuple[list[str], list[Path]]], out: str
    ) -> Callable[[Path], tuple[list[str], list[Path]]]:
        def wrapped(root: Path) -> tuple[list[str], list[Path]]:
            argv, outputs = build(root)
            (root / out).write_text("a file where the output folder should go\n")
            return argv, []

        return wrapped

    def pick(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _checkpoint(root / "model.pt")
        return ["m0.mrc", "--model", "model.pt", *_PICK, "--overlay", "out/overlays"], [root / "out"]

    def train(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _mrc(root / "m1.mrc", seed=1)
        return [_project(root), *_TRAIN], [root / "out"]

    def finetune(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _checkpoint(root / "model.pt")
        return ["--model", "model.pt", "--micrographs", "m0.mrc", "--coords", "m0.csv", *_FINETUNE], _finetune_outputs(
            root
        )

    def evaluate(root: Path) -> tuple[list[str], list[Path]]:
        _labels(root / "truth.csv", "m1")
        _labels(root / "picks.csv", "m1")
        return [
            "picks.csv",
            "--truth",
            "truth.csv",
            "--box",
            "40",
            "--json",
            "out/scores.json",
            "--plots",
            "out/plots",
        ], [root / "out"]

    def simulate(root: Path) -> tuple[list[str], list[Path]]:
        return [STRUCTURE, "--out", "out", "--n-micrographs", "1", "--size", "64", "--quiet"], [root / "out"]

    def demo(root: Path) -> tuple[list[str], list[Path]]:
        return ["--out", "out", "--epochs", "1", "--batches-per-epoch", "1"], [root / "out"]

    cases = []
    for verb, build, out in (
        ("pick", pick, "out"),
        ("train", train, "out"),
        ("finetune", finetune, "new.finetune"),
        ("evaluate", evaluate, "out"),
        ("simulate", simulate, "out"),
    ):
        cases.append(Case(verb, "output folder is an existing file", blocked(build, out), names=out))
        cases.append(
            Case(verb, "disk full (every write fails with ENOSPC)", build, names="No space left", wrap=disk_full)
        )
        if verb in ("pick", "train", "finetune"):
            cases.append(
                Case(
                    verb,
                    "disk fills during the run (ENOSPC after 2 files)",
                    build,
                    names="No space left",
                    wrap=lambda: disk_full(after=2),
                    slow=verb != "pick",
                )
            )
    cases.append(Case("demo", "output folder is an existing file", blocked(demo, "out"), names="out"))
    return cases


CASES: list[Case] = [
    *_micrograph_cases(),
    *_coordinate_cases(),
    *_absent_micrograph_cases(),
    *_project_cases(),
    *_checkpoint_cases(),
    *_simulate_cases(),
    *_output_cases(),
]


# --- issue 22: what a hostile probe found -------------------------------------------------------------


def _size_checkpoint(path: Path) -> None:
    """A tiny model with a size head: ``pick`` corrects the diameter with it by default."""
    import torch
    from _synthetic import write_checkpoint

    from hydrapicker.model import HydraPicker
    from hydrapicker.presets import get_preset

    torch.manual_seed(0)
    write_checkpoint(path, HydraPicker(get_preset("tiny"), size_head=True))


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    Image.fromarray((np.clip(_image(seed) + 1.5, 0, 3) * 80).astype(np.uint8)).save(path)


def _picked(root: Path, *extra: str) -> None:
    """``out/``: m0 and m1 picked (star and box too) as a finished run leaves them."""
    from hydrapicker.cli import main

    _scene(root)
    _mrc(root / "m1.mrc", seed=1)
    _checkpoint(root / "model.pt")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["pick", str(root / "m0.mrc"), str(root / "m1.mrc"), "--model", str(root / "model.pt")]
                    + ["--out", str(root / "out"), "--diameter-px", "40", "--format", "star,box", *extra])  # fmt: skip
    assert code == 0


def _kill_leftovers(root: Path) -> None:
    """The hidden temporaries a run killed mid-write leaves beside the files they were to become."""
    for folder in ("csv", "candidates"):
        text = (root / "out" / folder / "m1.csv").read_text()
        (root / "out" / folder / ".m1.k2j3h4.tmp.csv").write_text(text[: len(text) // 2])


@contextlib.contextmanager
def _read_only_parent() -> Iterator[None]:
    """Making a folder fails with EACCES, as under a read-only parent (the tests may run as root, whom modes do not stop)."""
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "out":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    Path.mkdir = mkdir  # type: ignore[method-assign]
    try:
        yield
    finally:
        Path.mkdir = real  # type: ignore[method-assign]


def _issue22_cases() -> list[Case]:
    pinned = "reliability/test_issue22.py"

    def pick_with(
        *options: str, model: Callable[[Path], None] = _checkpoint, bad: Callable[[Path], None] | None = None
    ):
        def build(root: Path) -> tuple[list[str], list[Path]]:
            _scene(root)
            model(root / "model.pt")
            (bad or (lambda path: _mrc(path, seed=1)))(root / "m1.mrc")
            return ["m0.mrc", "m1.mrc", "--model", "model.pt", "--out", "out", "--threshold", "0.0", *options], [
                root / "out"
            ]

        return build

    def header(pixel_size: float) -> Callable[[Path], None]:
        def make(path: Path) -> None:
            from hydrapicker.io import write_mrc

            write_mrc(path, _image(1), pixel_size=pixel_size)

        return make

    def complex_mrc(path: Path) -> None:
        import mrcfile

        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data((_image(1) + 1j * _image(2)).astype(np.complex64))

    def uneven_tiff(root: Path) -> tuple[list[str], list[Path]]:
        import tifffile

        _scene(root)
        _checkpoint(root / "model.pt")
        with tifffile.TiffWriter(root / "m1.tif") as tiff:
            tiff.write(_image(1))
            tiff.write(_image(2)[:100])
        return ["m0.mrc", "m1.tif", "--model", "model.pt", *_PICK], [root / "out"]

    def dangling(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _checkpoint(root / "model.pt")
        (root / "m1.mrc").symlink_to(root / "raw" / "m1.mrc")
        return [".", "--model", "model.pt", *_PICK], [root / "out"]

    def overlay_into_inputs(root: Path) -> tuple[list[str], list[Path]]:
        _checkpoint(root / "model.pt")
        (root / "inout").mkdir()
        _png(root / "inout" / "p0.png", 0)
        return ["inout", "--out", "inout/picks", "--model", "model.pt", "--diameter-px", "40", "--overlay", "inout"], [
            root / "inout" / "picks"
        ]

    def rerun(root: Path) -> tuple[list[str], list[Path]]:
        _picked(root)
        return ["m0.mrc", "m1.mrc", "--model", "model.pt", "--out", "out", "--diameter-px", "40"] + [
            "--format", "star,box", "--threshold", "0.6"
        ], [root / "out"]  # fmt: skip

    def threshold_after_kill(*options: str) -> Callable[[Path], tuple[list[str], list[Path]]]:
        def build(root: Path) -> tuple[list[str], list[Path]]:
            _picked(root)
            _kill_leftovers(root)
            out = root / "out"
            return ["out", *options], [out / "picks.csv", out / "star", out / "box", out / "threshold.json"]

        return build

    def sidecar_without_box(root: Path) -> tuple[list[str], list[Path]]:
        _picked(root)
        sidecar = root / "out" / "candidates" / "m1.json"
        sidecar.write_text(sidecar.read_text().replace('"box_size": 40.0', '"box_size": null'))
        return ["out", "--set", "0.3"], [root / "out"]

    def report_with(damage: Callable[[Path], None]) -> Callable[[Path], tuple[list[str], list[Path]]]:
        def build(root: Path) -> tuple[list[str], list[Path]]:
            _picked(root)
            damage(root)
            return ["out", "--out", "report.html"], [root / "report.html"]

        return build

    def evaluate_star(root: Path) -> tuple[list[str], list[Path]]:
        (root / "truth.star").write_text(
            "data_\nloop_\n_rlnMicrographName\n_rlnCoordinateX\n_rlnCoordinateY\n"
            + "".join(f"{d}/s0.mrc {x:g} {y:g}\n" for d in ("a", "b") for x, y in CENTRES)
        )
        _labels(root / "picks.csv", "s0")
        return ["picks.csv", "--truth", "truth.star", "--box", "40", "--json", "scores.json"], [root / "scores.json"]

    def evaluate_bom(root: Path) -> tuple[list[str], list[Path]]:
        _labels(root / "truth.csv", "m1")
        (root / "picks.csv").write_bytes((root / "truth.csv").read_text().encode("utf-8-sig"))
        return ["picks.csv", "--truth", "truth.csv", "--box", "40", "--json", "scores.json"], [root / "scores.json"]

    def evaluate_onto_truth(root: Path) -> tuple[list[str], list[Path]]:
        _labels(root / "truth.csv", "m1")
        _labels(root / "picks.csv", "m1")
        return ["picks.csv", "--truth", "truth.csv", "--box", "40", "--json", "truth.csv"], []

    def garbage(name: str, text: str) -> Callable[[Path], None]:
        return lambda root: (root / "out" / name).write_text(text)

    def remove(root: Path) -> None:
        (root / "m1.mrc").unlink()

    def damage(root: Path) -> None:
        (root / "m1.mrc").write_bytes((root / "m1.mrc").read_bytes()[:600])

    listed = {"expect": "listed", "names": "m1", "pinned_by": pinned}
    return [
        Case("pick", "--overlay into the folder of the PNG micrographs", overlay_into_inputs, names="p0.png", pinned_by=pinned),
        Case("pick", "micrograph whose header says 0.001 Å/px (size correction on)",
             pick_with("--diameter-A", "40", model=_size_checkpoint, bad=header(0.001)), **listed),
        Case("pick", "micrograph whose header says 300 Å/px", pick_with("--diameter-A", "40", bad=header(300.0)), **listed),
        Case("pick", "--diameter-px 0.5 (an 80x enlargement)", pick_with("--diameter-px", "0.5"), names="--diameter-px"),
        Case("pick", "--diameter-px 1e-300", pick_with("--diameter-px", "1e-300"), names="--diameter-px"),
        Case("pick", "--nms-iou -1", pick_with("--diameter-px", "40", "--nms-iou", "-1"), names="NMS IoU"),
        Case("pick", "--nms-iou 5", pick_with("--diameter-px", "40", "--nms-iou", "5"), names="NMS IoU"),
        Case("pick", "--nms-iou nan", pick_with("--diameter-px", "40", "--nms-iou", "nan"), names="NMS IoU"),
        Case("pick", "--refine-radius 10", pick_with("--diameter-px", "40", "--refine-radius", "10"), names="refine radius"),
        Case("pick", "--refine-radius 1e9", pick_with("--diameter-px", "40", "--refine-radius", "1e9"), names="refine radius"),
        Case("pick", "--out under a read-only parent", pick_with("--diameter-px", "40"), names="Permission denied", wrap=_read_only_parent),
        Case("pick", "complex-valued MRC", pick_with("--diameter-px", "40", bad=complex_mrc), **listed),
        Case("pick", "TIFF with pages of two sizes", uneven_tiff, **listed),
        Case("pick", "link to a file that does not exist, in the folder picked", dangling, **listed),
        Case("pick", "rerun into a finished folder with --threshold 0.6", rerun, names="--threshold", pinned_by=pinned),
        Case("threshold", "hidden temporaries a killed pick left in csv/ and candidates/", threshold_after_kill(),
             expect="accepted", why="hidden files are another writer's temporaries: not read", pinned_by=pinned),
        Case("threshold", "--set with hidden temporaries a killed pick left", threshold_after_kill("--set", "0.3"),
             expect="accepted", why="hidden files are another writer's temporaries: not read", pinned_by=pinned),
        Case("threshold", "--set with one sidecar without its box size (BOX files need it)", sidecar_without_box,
             names="m1.json", pinned_by=pinned),
        Case("report", "hidden temporaries a killed pick left", report_with(_kill_leftovers),
             expect="accepted", why="hidden files are another writer's temporaries: not read", pinned_by=pinned),
        Case("report", "a sidecar that is not JSON", report_with(garbage("candidates/m1.json", "{garbage")), names="m1.json"),
        Case("report", "a sidecar that is a JSON list", report_with(garbage("candidates/m1.json", "[1, 2]")), names="m1.json"),
        Case("report", "command.json that is not JSON", report_with(garbage("command.json", "{garbage")), names="command.json"),
        Case("report", "command.json that is a JSON list", report_with(garbage("command.json", "[]")), names="command.json"),
        Case("report", "command.json whose command_line is a number",
             report_with(garbage("command.json", '{"verb": "pick", "command_line": 5, "options": {}}')), names="command.json"),
        Case("report", "one micrograph deleted since it was picked", report_with(remove),
             expect="accepted", why="counted, listed as without a readable file, not drawn", pinned_by=pinned),
        Case("report", "one micrograph damaged since it was picked", report_with(damage),
             expect="accepted", why="counted, listed as without a readable file, not drawn", pinned_by=pinned),
        Case("evaluate", "STAR naming a/s0.mrc and b/s0.mrc (truth)", evaluate_star, names="'s0'", pinned_by="io/test_coordinates.py"),
        Case("evaluate", "CSV saved with a byte-order mark (picks)", evaluate_bom,
             expect="accepted", why="the BOM is not part of the header: AP 1", pinned_by=pinned),
        Case("evaluate", "--json onto the truth file", evaluate_onto_truth, names="would overwrite the input"),
    ]  # fmt: skip


CASES += _issue22_cases()


# --- what an earlier run left: refused before anything is written, unless asked -------------------


def _earlier_run_cases() -> list[Case]:
    """Files of an earlier run (or of another tool) where a run would write: refused, with the way on."""

    def pick_into_theirs(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _checkpoint(root / "model.pt")
        (root / "theirs").mkdir()
        (root / "theirs" / "picks.csv").write_text("x,y\n10,20\n")  # another tool's, not ours to parse
        return ["m0.mrc", "--model", "model.pt", "--out", "theirs", "--diameter-px", "40"], [root / "theirs" / "csv"]

    def resume_unreadable(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _mrc(root / "m1.mrc", seed=1)
        (root / "out" / "stage1").mkdir(parents=True)
        (root / "out" / "stage1" / "last.pt").write_bytes(b"cut short")
        return [_project(root), *_TRAIN, "--resume"], [root / "out" / "model.pt"]

    def finetune_onto_checkpoint(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _checkpoint(root / "model.pt")
        _checkpoint(root / "new.pt")
        return ["--model", "model.pt", "--micrographs", "m0.mrc", "--coords", "m0.csv", *_FINETUNE], [
            root / "new.finetune"
        ]

    def adapt_onto_checkpoint(root: Path) -> tuple[list[str], list[Path]]:
        _scene(root)
        _checkpoint(root / "model.pt")
        _checkpoint(root / "new.pt")
        return ["m0.mrc", "--model", "model.pt", "--name", "new", "--diameter-px", "40", "--out", "new.pt"], [
            root / "new.adapt"
        ]

    def benchmark_of_another_protocol(root: Path) -> tuple[list[str], list[Path]]:
        structures = Path(__file__).resolve().parents[1] / "data" / "structures"
        (root / "bench.toml").write_text(f'structures = "{structures}"\ntargets = ["4hhb"]\nunseen = ["1hvr"]\n')
        from hydrapicker.apps.benchmark.config import load_config
        from hydrapicker.apps.benchmark.run import PROTOCOL_RECORD, protocol_record

        held = {**protocol_record(load_config(root / "bench.toml")), "targets": ["6b7n"]}  # a run of 6b7n was there
        (root / "out").mkdir()
        (root / "out" / PROTOCOL_RECORD).write_text(json.dumps(held))
        return ["bench.toml", "--out", "out"], [root / "out" / "REPORT.md"]

    def simulate_into_theirs(root: Path) -> tuple[list[str], list[Path]]:
        (root / "out").mkdir()
        (root / "out" / "config.json").write_text('{"the": "user\'s own settings"}')
        model = Path(__file__).resolve().parents[1] / "data" / "structures" / "4hhb.pdb.gz"
        return [model, "--out", "out", "--n-micrographs", "1", "--size", "128", "--quiet"], [
            root / "out" / "micrographs"
        ]

    return [
        Case("pick", "--out holding another tool's picks.csv", pick_into_theirs, names="picks.csv",
             pinned_by="reliability/test_issue20_with_22.py"),
        Case("train", "--resume from an unreadable last.pt", resume_unreadable, names="last.pt",
             pinned_by="training/test_stages.py"),
        Case("finetune", "--out onto an existing checkpoint", finetune_onto_checkpoint, names="--overwrite",
             pinned_by="training/test_finetune.py"),
        Case("adapt", "--out onto an existing checkpoint", adapt_onto_checkpoint, names="--overwrite",
             pinned_by="training/test_adapt.py"),
        Case("simulate", "--out holding a config.json of another run or of the user's", simulate_into_theirs,
             names="config.json"),
        Case("benchmark", "--out holding a benchmark of another protocol", benchmark_of_another_protocol,
             names="another protocol", pinned_by="apps/test_benchmark.py"),
    ]  # fmt: skip


CASES += _earlier_run_cases()
