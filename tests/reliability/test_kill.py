"""Killed runs: SIGKILL at random moments, then a rerun, gives exactly the uninterrupted outputs,
and no output file is ever visible half-written (every writer is atomic).

Runs are real processes (:mod:`_zygote`), killed with SIGKILL at seeded random delays.
tests/test_pick.py pins the skip-what-is-done logic in-process and tests/test_train.py resume
after an exception at an epoch end; here the kill can land anywhere, mid-write included.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic import gaussian_spots, write_checkpoint
from _zygote import Zygote

from hydrapicker.checkpoint import load_checkpoint
from hydrapicker.io import write_mrc
from hydrapicker.model import HydraPicker
from hydrapicker.presets import get_preset
from hydrapicker.training.config import TrainConfig

N_MICROGRAPHS = 30
KILL_POINTS = 20
SEED = 20261125


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def pick_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny untrained model (weights perturbed so every layer matters) and 30 small MRC micrographs."""
    root = tmp_path_factory.mktemp("kill-inputs")
    torch.manual_seed(0)
    model = HydraPicker(get_preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    write_checkpoint(root / "tiny.pt", model)
    rng = np.random.default_rng(0)
    for i in range(N_MICROGRAPHS):
        centres = rng.uniform(10, 86, size=(5, 2))
        image = gaussian_spots((96, 96), centres, 5, contrast=-1.0, noise=0.3, seed=i)
        write_mrc(root / "mics" / f"mic_{i:02d}.mrc", image, pixel_size=2.0)
    return root / "tiny.pt", root / "mics"


def _visible_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` except hidden ones (atomic writers' temporaries start with '.')."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def _without_time(record: bytes) -> dict:
    data = json.loads(record)
    data.pop("time")
    return data


def _without_stamp(star: bytes) -> bytes:
    # starfile heads every file with "# Created by the starfile Python package ... at <time>"
    return b"\n".join(line for line in star.split(b"\n") if not line.startswith(b"# Created by the starfile"))


def _same_as_reference(name: str, content: bytes, reference: dict[str, bytes]) -> bool:
    """Byte for byte, but for the times that command.json and STAR files carry."""
    if name not in reference:
        return False
    if name == "command.json":
        return _without_time(content) == _without_time(reference[name])
    if name.endswith((".star", ".cbox")):
        return _without_stamp(content) == _without_stamp(reference[name])
    return content == reference[name]


class _Watcher(threading.Thread):
    """Polls an output folder while a run writes into it: every visible file must already be
    byte-identical to the uninterrupted run's (so never partial); records any that is not."""

    def __init__(self, folder: Path, reference: dict[str, bytes]) -> None:
        super().__init__(daemon=True)
        self.folder, self.reference = folder, reference
        self.stop = threading.Event()
        self.bad: list[str] = []
        self.polls = 0
        self._seen: dict[str, tuple[int, int, int]] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            time.sleep(0.02)
        self.poll()

    def poll(self) -> None:
        self.polls += 1
        for path in self.folder.rglob("*"):
            relative = path.relative_to(self.folder)
            if any(part.startswith(".") for part in relative.parts):
                continue
            try:
                stat = path.stat()
                key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if path.is_dir() or self._seen.get(str(relative)) == key:
                    continue
                content = path.read_bytes()
            except FileNotFoundError:
                continue
            self._seen[str(relative)] = key
            if not _same_as_reference(str(relative), content, self.reference):
                self.bad.append(f"{relative} ({len(content)} bytes)")


def _pick_argv(model: Path, mics: Path) -> list[str]:
    # Relative --out, so that command.json is the same in every folder (but for its time).
    return [
        "pick",
        str(mics),
        "--out",
        "out",
        "--overlay",
        "out/overlays",
        "--model",
        str(model),
        "--diameter-px",
        "20",
        "--threshold",
        "0.0",
        "--workers",
        "2",
    ]


def test_pick_killed_at_twenty_random_points_and_rerun_gives_the_uninterrupted_outputs(zygote, pick_inputs, tmp_path):
    model, mics = pick_inputs
    argv = _pick_argv(model, mics)
    (tmp_path / "ref").mkdir()
    whole = zygote.run(argv, tmp_path / "ref")
    assert whole.code == 0, whole.output
    reference = _visible_files(tmp_path / "ref" / "out")
    for i in range(N_MICROGRAPHS):
        assert f"csv/mic_{i:02d}.csv" in reference and f"overlays/mic_{i:02d}.png" in reference

    rng = np.random.default_rng(SEED)
    kills, attempts, progress, leftovers = 0, 0, [], 0
    while kills < KILL_POINTS:
        attempts += 1
        assert attempts < 3 * KILL_POINTS, f"only {kills} of {attempts} runs were still running at their kill time"
        folder = tmp_path / f"kill{attempts:02d}"
        (folder / "out").mkdir(parents=True)
        watcher = _Watcher(folder / "out", reference)
        watcher.start()
        try:
            killed = zygote.run(argv, folder, kill_after=rng.uniform(0.0, 1.1) * whole.seconds)
            if killed.killed:
                kills += 1
                progress.append(
                    len(list((folder / "out" / "csv").glob("*.csv"))) if (folder / "out" / "csv").is_dir() else 0
                )
                leftovers += sum(1 for p in (folder / "out").rglob(".*") if p.is_file())
            rerun = zygote.run(argv, folder)
        finally:
            watcher.stop.set()
            watcher.join()
        assert rerun.code == 0, rerun.output
        assert not watcher.bad, (
            f"partial or wrong files seen during the run killed at attempt {attempts}: {watcher.bad[:5]}"
        )
        final = _visible_files(folder / "out")
        assert sorted(final) == sorted(reference)
        different = [name for name, content in final.items() if not _same_as_reference(name, content, reference)]
        assert not different, (
            f"after kill {attempts} and a rerun these differ from the uninterrupted run: {different[:5]}"
        )
    # Kills landed mid-run (some micrographs written, some not), not only before or after the work.
    assert sum(0 < done < N_MICROGRAPHS for done in progress) >= KILL_POINTS // 4, progress
    print(
        f"{kills} kills in {attempts} runs; micrographs done at each kill: {progress}; leftover temporaries: {leftovers}"
    )


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_project(tmp_path_factory) -> Path:
    """Two small labelled synthetic micrographs, 40-px particles at 1 Å/px: no rescaling."""
    root = tmp_path_factory.mktemp("train-project")
    rng = np.random.default_rng(5)
    for i in range(2):
        centres = rng.uniform(30, 370, size=(12, 2))
        write_mrc(
            root / f"m{i}.mrc",
            gaussian_spots((400, 400), centres, 10, contrast=-1.0, noise=0.3, seed=i),
            pixel_size=1.0,
        )
        lines = ["micrograph,x,y,score", *(f"m{i},{x:.2f},{y:.2f},1" for x, y in centres)]
        (root / f"m{i}.csv").write_text("\n".join(lines) + "\n")
    project = root / "project.toml"
    project.write_text(
        '[[dataset]]\nname = "toy"\nmicrographs = "*.mrc"\ncoordinates = "*.csv"\npixel_size = 1.0\ndiameter = 40.0\n'
        'val = ["m1"]\n'
    )
    return project


def _train_argv(project: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(project),
        "--out",
        "out",
        "--preset",
        "tiny",
        "--stage",
        "1",
        "--epochs",
        "3",
        "--batches-per-epoch",
        "2",
        "--val-batches",
        "1",
        "--threads",
        "1",
        "--seed",
        "4",
        *extra,
    ]


@pytest.mark.slow  # tests/test_train.py resumes after an interruption at each stage's epoch ends, faster
def test_train_killed_at_random_points_and_resumed_gives_the_uninterrupted_model(zygote, train_project, tmp_path):
    (tmp_path / "ref").mkdir()
    whole = zygote.run(_train_argv(train_project), tmp_path / "ref")
    assert whole.code == 0, whole.output
    reference = load_checkpoint(tmp_path / "ref" / "out" / "model.pt")[0].state_dict()
    rng = np.random.default_rng(SEED + 1)
    kills, epochs_done = 0, []
    for attempt in range(3):
        folder = tmp_path / f"kill{attempt}"
        folder.mkdir()
        for delay in rng.uniform(0.2, 1.0, size=2) * whole.seconds:  # kill the first run, then the resumed one too
            resume = ["--resume"] if (folder / "out").exists() else []
            killed = zygote.run(_train_argv(train_project, *resume), folder, kill_after=delay).killed
            kills += killed
            log = folder / "out" / "stage1" / "log.csv"
            epochs_done.append(len(log.read_text().splitlines()) - 1 if log.is_file() else 0)
        done = zygote.run(_train_argv(train_project, "--resume"), folder)
        assert done.code == 0, done.output
        resumed = load_checkpoint(folder / "out" / "model.pt")[0].state_dict()
        for key, value in reference.items():
            assert torch.equal(resumed[key], value), (attempt, key)
        with (
            open(folder / "out" / "stage1" / "log.csv") as log,
            open(tmp_path / "ref" / "out" / "stage1" / "log.csv") as ref,
        ):
            assert [r.split(",")[:6] for r in log] == [r.split(",")[:6] for r in ref]
    assert kills >= 3
    print(f"train: {kills} kills of 6 runs; epochs finished at each: {epochs_done}")


def test_a_kill_between_the_last_checkpoint_and_its_logs_is_healed_by_resume(train_project, tmp_path, monkeypatch):
    # The last epoch's checkpoint says the stage is done, so resume trains nothing: it must still write the logs.
    from hydrapicker.data.project import load_project
    from hydrapicker.training import loop as loop_module
    from hydrapicker.training.stages import train

    config = TrainConfig(
        preset="tiny",
        stage="1",
        epochs=2,
        batches_per_epoch=1,
        val_batches=1,
        batch_size=2,
        crop_size=96,
        pad_to=128,
        target_diameter_px=20.0,
        threads=1,
        seed=3,
    )
    datasets = load_project(train_project)
    write_logs = loop_module._write_logs

    def killed_on_the_last_epoch(stage_dir, rows, stage, val_split):
        if len(rows) == config.epochs:
            raise KeyboardInterrupt  # stands in for SIGKILL right after last.pt was saved
        write_logs(stage_dir, rows, stage, val_split)

    monkeypatch.setattr(loop_module, "_write_logs", killed_on_the_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(datasets, tmp_path, config)
    monkeypatch.setattr(loop_module, "_write_logs", write_logs)
    train(datasets, tmp_path, config, resume=True)
    with open(tmp_path / "stage1" / "log.csv") as log:
        assert len(log.readlines()) == 1 + config.epochs
    assert len(json.loads((tmp_path / "stage1" / "log.json").read_text())["epochs"]) == config.epochs


@pytest.mark.slow  # tests/training/test_finetune.py and the training test above cover resume faster
def test_finetune_killed_at_random_points_and_resumed_gives_the_uninterrupted_head(
    zygote, train_project, pick_inputs, tmp_path
):
    base, _ = pick_inputs
    folder = train_project.parent
    argv = [
        "finetune",
        "--model",
        str(base),
        "--name",
        "toy",
        "--micrographs",
        str(folder / "m0.mrc"),
        str(folder / "m1.mrc"),
        "--coords",
        str(folder / "m0.csv"),
        str(folder / "m1.csv"),
        "--diameter-px",
        "40",
        "--out",
        "toy.pt",
        "--epochs",
        "3",
        "--batches-per-epoch",
        "2",
        "--val-batches",
        "1",
        "--threads",
        "1",
        "--seed",
        "4",
    ]
    (tmp_path / "ref").mkdir()
    whole = zygote.run(argv, tmp_path / "ref")
    assert whole.code == 0, whole.output
    reference = load_checkpoint(tmp_path / "ref" / "toy.pt")[0].state_dict()
    rng = np.random.default_rng(SEED + 2)
    kills = 0
    for attempt in range(2):
        run = tmp_path / f"kill{attempt}"
        run.mkdir()
        for delay in rng.uniform(0.2, 1.0, size=2) * whole.seconds:
            kills += zygote.run([*argv, "--resume"], run, kill_after=delay).killed
        done = zygote.run([*argv, "--resume"], run)
        assert done.code == 0, done.output
        resumed = load_checkpoint(run / "toy.pt")[0].state_dict()
        for key, value in reference.items():
            assert torch.equal(resumed[key], value), (attempt, key)
    assert kills >= 2
