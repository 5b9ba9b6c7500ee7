"""Training and picking under torchrun (2 CPU processes, gloo) against the equivalent single-process runs.

The torchrun runs are real launches of the command line (``python -m torch.distributed.run
--nproc-per-node 2 --standalone -m hydrapicker ...``) in a subprocess with one thread per
process, on tiny generated data; the single-process runs they are compared with also use one
thread, so the float arithmetic of each batch is the same.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic import gaussian_spots, spread_tiny_model, write_checkpoint

from hydrapicker import distributed
from hydrapicker.checkpoint import load_checkpoint
from hydrapicker.cli import main as cli_main
from hydrapicker.data.project import load_project
from hydrapicker.errors import HydraPickerError
from hydrapicker.io import write_mrc
from hydrapicker.io.run_folder import expected_outputs
from hydrapicker.training.config import TrainConfig
from hydrapicker.training.stages import train

REPO = Path(__file__).resolve().parents[1]


def _torchrun(*argv: str, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run ARGV`` with ``nproc`` processes of one thread each."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone", *argv]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the launch environment and sharding ------------------------------------------------------


def test_launch_is_read_from_torchrun_environment_and_is_one_process_without_it():
    assert distributed.from_environment({}) == distributed.Launch(0, 1, 0)
    assert distributed.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == distributed.Launch(
        3, 4, 1
    )
    with pytest.raises(HydraPickerError, match="RANK=4, WORLD_SIZE=4"):
        distributed.from_environment({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(HydraPickerError, match="WORLD_SIZE='two'"):
        distributed.from_environment({"RANK": "0", "WORLD_SIZE": "two"})


def test_a_single_process_is_rank_0_of_1_and_keeps_every_item():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(list("abcde")) == list("abcde")
    assert distributed.all_gather({"x": 1}) == [{"x": 1}]
    distributed.barrier()  # nothing to wait for


# --- training ---------------------------------------------------------------------------------


def _write_dataset(folder: Path, n: int, seed: int) -> None:
    """``n`` 160² MRC micrographs of bright 40-px particles (1 Å/px, so the model's own size) + CSV labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        xy = rng.uniform(25, 135, size=(5, 2))
        write_mrc(
            folder / f"mic_{i}.mrc", gaussian_spots((160, 160), xy, 8.0, noise=0.5, seed=seed + i), pixel_size=1.0
        )
        (folder / f"mic_{i}.csv").write_text("x,y\n" + "".join(f"{x:.2f},{y:.2f}\n" for x, y in xy))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Two datasets (so stage 2 has two heads and ranks draw batches of different datasets)."""
    root = tmp_path_factory.mktemp("project")
    tables = []
    for k, name in enumerate(("alpha", "beta")):
        _write_dataset(root / name, 3, seed=10 * k)
        tables.append(
            f'[[dataset]]\nname = "{name}"\nmicrographs = "{name}/*.mrc"\ncoordinates = "{name}/*.csv"\n'
            f'pixel_size = 1.0\ndiameter = 40.0\nval = ["mic_2"]\n'
        )
    path = root / "project.toml"
    path.write_text("\n".join(tables))
    return path


#: Tiny crops and batches: the plumbing, not the accuracy (the CLI's options cannot go this small).
CONFIG = dict(
    preset="tiny", batches_per_epoch=2, val_batches=3, batch_size=2, crop_size=96, pad_to=128, seed=5, threads=1
)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _torchrun_train(project: Path, out: Path, *, resume: bool = False, **config) -> subprocess.CompletedProcess:
    script = str(REPO / "tests" / "_torchrun_train.py")
    return _torchrun(
        script, str(project), str(out), json.dumps({**CONFIG, **config}), *(["--resume"] if resume else [])
    )


def test_torchrun_training_equals_one_process_accumulating_the_same_batches_and_resumes(project, tmp_path, one_thread):
    """2 ranks x 1 batch per step == 1 process x 2 batches per step (same seed), through both stages,
    with the 2-rank run stopped after stage 1's first epoch and resumed.

    Equal to float rounding, as the sums are nearly the same: DDP's average of two gradients is one
    process's sum of two halves (measured: stage 1 bit-identical, stage 2 within 2e-9, where the
    bias gradient joins the sums at another place)."""
    single = tmp_path / "single"
    train(load_project(project), single, TrainConfig(**CONFIG, epochs=2, stage2_epochs=1, accumulate=2))

    ranks = tmp_path / "ranks"
    _torchrun_train(project, ranks, stage="1", epochs=1)
    assert not (ranks / "stage2").exists()
    result = _torchrun_train(project, ranks, epochs=2, stage2_epochs=1, resume=True)
    assert result.stdout.count("Model:") == 1

    for name in ("stage1/last.pt", "stage2/last.pt", "model.pt"):
        one, two = _weights(single / name), _weights(ranks / name)
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6, msg=f"{name} {key}")
    # the generic head moved in stage 2, where only the bias term trains it
    first, trained = _weights(single / "stage1/best.pt"), _weights(single / "stage2/last.pt")
    assert any(not torch.equal(first[k], trained[k]) for k in first if k.startswith("generic."))
    for name in ("stage1/log.csv", "stage2/log.csv"):
        for one, two in zip(_rows(single / name), _rows(ranks / name), strict=True):
            for field in ("train_loss", "train_bias", "val_loss"):
                assert float(two[field]) == pytest.approx(float(one[field]), rel=1e-5), (name, field)
    assert json.loads((ranks / "config.json").read_text())["world_size"] == 2
    leftovers = [p.name for p in ranks.rglob(".*tmp*")]
    assert not leftovers, leftovers  # rank 0 alone wrote, nothing half-written


def test_ranks_accumulating_two_batches_equal_one_process_accumulating_four(project, tmp_path, one_thread):
    """The no_sync path: 2 ranks x 2 batches == 1 process x 4 batches, one step.

    Not bit-identical: (a/2 + b/2)/2 + (c/2 + d/2)/2 and a/4 + b/4 + c/4 + d/4 round differently
    (4e-8 here); Adam amplifies such differences step by step (1e-6 after two steps, 4e-6 after
    six on this data, whether or not the bias term is on), so one step is compared."""
    config = dict(CONFIG, stage="1", epochs=1, batches_per_epoch=1, val_batches=1)
    train(load_project(project), tmp_path / "single", TrainConfig(**config, accumulate=4))
    _torchrun_train(project, tmp_path / "ranks", **config, accumulate=2)
    one, two = _weights(tmp_path / "single/model.pt"), _weights(tmp_path / "ranks/model.pt")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6, msg=key)


def test_a_step_of_two_batches_differs_from_a_step_of_one(project, tmp_path, one_thread):
    """The equivalence above is not vacuous: accumulating a second batch changes the weights."""
    datasets = load_project(project)
    train(datasets, tmp_path / "a", TrainConfig(**CONFIG, stage="1", epochs=1, accumulate=1))
    train(datasets, tmp_path / "b", TrainConfig(**CONFIG, stage="1", epochs=1, accumulate=2))
    a, b = _weights(tmp_path / "a/model.pt"), _weights(tmp_path / "b/model.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)


# --- picking ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", spread_tiny_model())


@pytest.fixture
def micrographs(tmp_path) -> Path:
    folder = tmp_path / "mics"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        xy = rng.uniform(20, 140, size=(6, 2))
        write_mrc(
            folder / f"mic_{i}.mrc",
            gaussian_spots((160, 180), xy, 10.0, contrast=-1.0, noise=0.3, seed=i),
            pixel_size=2.0,
        )
    return folder


def _picks(path: Path) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {}
    for row in _rows(path):
        rows.setdefault(row["micrograph"], []).append([float(row["x"]), float(row["y"]), float(row["score"])])
    return {name: np.array(sorted(values)) for name, values in rows.items()}


def test_torchrun_picking_shards_micrographs_and_merges_what_one_process_picks(
    checkpoint, micrographs, tmp_path, one_thread
):
    options = [
        "--model",
        str(checkpoint),
        "--diameter-px",
        "40",
        "--threshold",
        "0.2",
        "--format",
        "star,csv",
        "--workers",
        "1",
    ]
    single = tmp_path / "single"
    assert cli_main(["pick", str(micrographs), "--out", str(single), *options]) == 0
    ranks = tmp_path / "ranks"
    # one micrograph already done (copied from the single run): a rerun skips it on whichever rank has it
    for done in expected_outputs(single, "mic_3", ["star", "csv"]):
        target = ranks / done.relative_to(single)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(done.read_bytes())
    result = _torchrun("-m", "hydrapicker", "pick", str(micrographs), "--out", str(ranks), *options)
    assert result.stdout.count("picked ") == 1, result.stdout  # rank 0 reports the whole run
    assert "picked 4 micrographs" in result.stdout and "skipped 1 already done" in result.stdout

    merged, expected = _picks(ranks / "picks.csv"), _picks(single / "picks.csv")
    assert sorted(merged) == sorted(expected) == [f"mic_{i}" for i in range(5)]
    for name in expected:
        np.testing.assert_allclose(merged[name], expected[name], atol=1e-4, err_msg=name)
    assert json.loads((ranks / "command.json").read_text())["options"]["threshold"] == 0.2
