"""Following a folder: complete = size stable over two looks and readable; batches through pick_files; idle, stop, restart."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic import checkpoint_dict, gaussian_spots

from hydrapicker.checkpoint import ModelMeta, save_checkpoint
from hydrapicker.cli import main as cli_main
from hydrapicker.io import read_picks, write_mrc
from hydrapicker.io.run_folder import expected_outputs
from hydrapicker.model import HydraPicker
from hydrapicker.particle_size import ParticleSize
from hydrapicker.picking.picker import Picker, PickSettings
from hydrapicker.picking.watch import FolderWatch, _InterruptToStop, watch_folder
from hydrapicker.presets import get_preset
from hydrapicker.training.config import TrainConfig

N_MICROGRAPHS = 20
HALF_WRITTEN = 5  # this one first appears truncated and stays so for many looks
POLL = 0.05
FORMATS = ("csv",)  # every format's writer is pick's business (test_pick.py)


@pytest.fixture(scope="module")
def picker() -> Picker:
    """An untrained tiny model: these tests are about files, not accuracy."""
    torch.manual_seed(0)
    model = HydraPicker(get_preset("tiny")).eval()
    meta = ModelMeta(
        preset=model.preset, head_names=model.head_names, target_diameter_px=40.0, anchor_stride=model.stride
    )
    # An 80-px particle: the network sees the 256² micrographs at 128², which keeps the test fast.
    return Picker(model, meta, PickSettings(ParticleSize(diameter_px=80), threshold=0.0))


@pytest.fixture(scope="module")
def mrc_bytes(tmp_path_factory) -> list[bytes]:
    """The bytes of 20 small (256²) MRC micrographs with dark spots."""
    folder = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_MICROGRAPHS):
        path = folder / f"{i}.mrc"
        write_mrc(
            path,
            gaussian_spots((256, 256), rng.uniform(20, 236, size=(6, 2)), 8, contrast=-1.0, noise=0.3, seed=i),
            pixel_size=2.0,
        )
        out.append(path.read_bytes())
    return out


def _slow_writer(
    folder: Path,
    data: list[bytes],
    gap: float,
    *,
    truncated_seen: threading.Event | None = None,
    stop_after: int | None = None,
    stop: threading.Event | None = None,
) -> threading.Thread:
    """Drops the micrographs into ``folder`` one by one, each in two writes (a copy in progress);
    micrograph HALF_WRITTEN is left truncated while the next five arrive and until
    ``truncated_seen`` is set (the watch reported it), then completed."""

    def run() -> None:
        for i, content in enumerate(data):
            path = folder / f"mic_{i:02d}.mrc"
            with open(path, "wb") as handle:
                handle.write(content[: len(content) // 2])
                handle.flush()
                if i != HALF_WRITTEN:
                    time.sleep(POLL / 5)
                    handle.write(content[len(content) // 2 :])
            if i == HALF_WRITTEN + 5:
                if truncated_seen is not None:
                    truncated_seen.wait(timeout=30)
                (folder / f"mic_{HALF_WRITTEN:02d}.mrc").write_bytes(data[HALF_WRITTEN])
            if stop_after is not None and i + 1 == stop_after and stop is not None:
                stop.set()
                return
            time.sleep(gap)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_twenty_micrographs_dropped_slowly_are_each_picked_once_complete_and_a_restart_picks_nothing_new(
    picker, mrc_bytes, tmp_path
):
    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    lines: list[str] = []
    truncated_seen = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if f"mic_{HALF_WRITTEN:02d}.mrc" in line:
            truncated_seen.set()

    writer = _slow_writer(folder, mrc_bytes, gap=2 * POLL, truncated_seen=truncated_seen)
    report = watch_folder([folder / "*.mrc"], out, picker, FORMATS, poll=POLL, idle=1.0, log=log)
    writer.join()

    stems = [f"mic_{i:02d}" for i in range(N_MICROGRAPHS)]
    assert report.stopped_by == "idle"
    assert sorted(report.picked) == stems and not report.failed and not report.skipped
    # The truncated micrograph was stable for many looks: reported once, then picked when completed.
    truncated = [line for line in lines if f"mic_{HALF_WRITTEN:02d}.mrc" in line and "not picked" in line]
    assert len(truncated) == 1
    for stem in stems:
        assert all(p.is_file() for p in expected_outputs(out, stem, FORMATS)), stem
    # Its outputs are those of the complete file (the truncated version never reached the network).
    path = folder / f"mic_{HALF_WRITTEN:02d}.mrc"
    direct = picker.pick(picker.prepare(path))
    written = read_picks(out / "csv" / f"mic_{HALF_WRITTEN:02d}.csv", "csv")[path.stem]
    assert len(direct) > 0
    np.testing.assert_allclose(written.x, direct.x, atol=1e-3)
    np.testing.assert_allclose(written.score, direct.score, atol=1e-6)
    assert sorted(read_picks(out / "picks.csv", "csv")) == stems

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = watch_folder([folder], out, picker, FORMATS, poll=POLL, idle=0.3, log=lines.append)
    assert again.stopped_by == "idle" and again.picked == [] and sorted(again.skipped) == stems
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_growing_file_is_not_ready_and_a_stable_unreadable_one_is_reported_once_until_it_changes(mrc_bytes, tmp_path):
    path = tmp_path / "a.mrc"
    watch = FolderWatch([tmp_path])
    path.write_bytes(mrc_bytes[0][:3000])
    assert watch.poll().changed  # first sight
    first = watch.poll()
    assert first.unreadable.keys() == {path.resolve()} and not first.ready
    again = watch.poll()
    assert not again.unreadable and not again.ready and not again.changed
    with open(path, "ab") as handle:
        handle.write(mrc_bytes[0][3000:])
    grown = watch.poll()
    assert grown.changed and not grown.ready
    assert watch.poll().ready == [path.resolve()]
    assert watch.poll().ready == []  # handed out once


def test_hidden_temporary_files_and_other_suffixes_are_ignored(mrc_bytes, tmp_path):
    (tmp_path / ".a.x1y2.tmp.mrc").write_bytes(mrc_bytes[0])
    (tmp_path / "notes.txt").write_text("x")
    watch = FolderWatch([tmp_path])
    watch.poll()
    found = watch.poll()
    assert not found.ready and not found.unreadable and not found.changed


def test_stop_ends_the_watch_between_micrographs_with_complete_outputs(picker, mrc_bytes, tmp_path):
    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    stop = threading.Event()
    writer = _slow_writer(folder, mrc_bytes[:4], gap=2 * POLL, stop_after=3, stop=stop)
    report = watch_folder([folder], out, picker, FORMATS, poll=POLL, idle=None, log=lambda line: None, stop=stop)
    writer.join()
    assert report.stopped_by == "stop" and len(report.picked) <= 3
    for stem in report.picked:
        assert all(p.is_file() for p in expected_outputs(out, stem, FORMATS))
    if report.picked:
        assert sorted(read_picks(out / "picks.csv", "csv")) == sorted(report.picked)


class _InterruptedPicker(Picker):
    """The fixture's picker, but Ctrl-C arrives while it picks its first micrograph."""

    def __init__(self, inner: Picker) -> None:
        self.__dict__.update(inner.__dict__)
        self.calls = 0

    def candidates(self, prepared):
        self.calls += 1
        if self.calls == 1:
            os.kill(os.getpid(), signal.SIGINT)  # handled in this (the main) thread
        return super().candidates(prepared)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread"
)
def test_ctrl_c_ends_the_watch_after_the_micrograph_being_picked_and_a_restart_goes_on(picker, mrc_bytes, tmp_path):
    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    for i in range(3):
        (folder / f"m{i}.mrc").write_bytes(mrc_bytes[i])
    before = signal.getsignal(signal.SIGINT)
    report = watch_folder(
        [folder], out, _InterruptedPicker(picker), FORMATS, poll=POLL, idle=None, log=lambda line: None
    )
    assert report.stopped_by == "interrupt" and report.picked == ["m0"]
    assert all(p.is_file() for p in expected_outputs(out, "m0", FORMATS))
    assert not any(p.exists() for p in expected_outputs(out, "m1", FORMATS))
    assert sorted(read_picks(out / "picks.csv", "csv")) == ["m0"]
    assert signal.getsignal(signal.SIGINT) is before
    again = watch_folder([folder], out, picker, FORMATS, poll=POLL, idle=0.3, log=lambda line: None)
    assert again.skipped == ["m0"] and sorted(again.picked) == ["m1", "m2"]


def test_first_ctrl_c_asks_to_stop_and_a_second_one_aborts():
    stop = threading.Event()
    handler = _InterruptToStop(stop, lambda line: None)
    handler(2, None)
    assert stop.is_set()
    with pytest.raises(KeyboardInterrupt):
        handler(2, None)


def test_pick_watch_from_the_command_line_picks_what_is_there_and_ends_when_idle(mrc_bytes, tmp_path):
    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    for i in range(2):
        (folder / f"m{i}.mrc").write_bytes(mrc_bytes[i])
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(
        checkpoint,
        checkpoint_dict(HydraPicker(get_preset("tiny")), TrainConfig(preset="tiny"), stage=1, epoch=0, val_loss=None),
    )
    argv = [
        "pick",
        str(folder),
        "--out",
        str(out),
        "--model",
        str(checkpoint),
        "--diameter-px",
        "80",
        "--threshold",
        "0",
    ]
    assert cli_main([*argv, "--format", "star", "--watch", "--poll", str(POLL), "--idle", "0.5"]) == 0
    assert all(all(p.is_file() for p in expected_outputs(out, f"m{i}", ["star"])) for i in range(2))
    assert (out / "command.json").is_file()
    assert cli_main([*argv, "--watch", "--idle", "0"]) == 1  # a bad --idle is one clear error


def test_picks_csv_joins_the_per_micrograph_files_and_leaves_out_a_temporary_one(tmp_path):
    """Rebuilt after every batch of a watch, so it joins text instead of parsing; the result must equal parsing."""
    from hydrapicker.io import Picks, write_picks
    from hydrapicker.io.run_folder import rebuild_picks_csv

    rng = np.random.default_rng(0)
    every = [
        Picks(f"m{i}", rng.uniform(0, 99, n), rng.uniform(0, 99, n), rng.uniform(0, 1, n))
        for i, n in enumerate([5, 0, 3])
    ]
    for picks in every:
        write_picks(tmp_path / "csv" / f"{picks.micrograph}.csv", picks, "csv")
    (tmp_path / "csv" / ".m9.abc.tmp.csv").write_text("micrograph,x,y,score\nm9,1.0,")  # another writer, mid-way
    write_picks(tmp_path / "parsed.csv", every, "csv")
    assert rebuild_picks_csv(tmp_path).read_text() == (tmp_path / "parsed.csv").read_text()
    (tmp_path / "csv" / "other.csv").write_text("x,y,micrograph,score\n1,2,other,0.5")  # not ours: parsed
    joined = read_picks(rebuild_picks_csv(tmp_path), "csv")
    assert sorted(joined) == ["m0", "m2", "other"] and joined["other"].x.tolist() == [1.0]


def test_a_threshold_set_during_the_watch_applies_to_the_micrographs_picked_after_it(picker, mrc_bytes, tmp_path):
    from dataclasses import replace

    from hydrapicker.io.run_folder import candidate_paths
    from hydrapicker.threshold import rewrite_outputs

    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    own = Picker.__new__(Picker)  # a copy: the watch switches its picker's threshold
    own.__dict__.update(picker.__dict__)
    own.settings = replace(picker.settings)
    picked = threading.Event()
    chosen: list[float] = []

    def set_threshold_between() -> None:
        (folder / "m0.mrc").write_bytes(mrc_bytes[0])
        if picked.wait(timeout=30):
            scores = read_picks(candidate_paths(out, "m0")[0], "csv")["m0"].score
            chosen.append(float(np.median(scores)))
            rewrite_outputs(out, chosen[0])
            (folder / "m1.mrc").write_bytes(mrc_bytes[1])

    thread = threading.Thread(target=set_threshold_between, daemon=True)
    thread.start()
    report = watch_folder(
        [folder], out, own, FORMATS, poll=POLL, idle=1.0, log=lambda line: line.startswith("picked") and picked.set()
    )
    thread.join()
    assert sorted(report.picked) == ["m0", "m1"] and own.settings.threshold == chosen[0]
    every = read_picks(candidate_paths(out, "m1")[0], "csv")["m1"]
    written = read_picks(out / "csv" / "m1.csv", "csv")["m1"]
    assert 0 < len(written) < len(every)
    np.testing.assert_array_equal(written.score, every.above(chosen[0]).score)
