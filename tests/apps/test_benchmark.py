"""The benchmark protocol: its config, its splits, and the --quick run end to end (and continued)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hydrapicker.apps.benchmark.config import load_config
from hydrapicker.apps.benchmark.run import check_protocol, run_benchmark
from hydrapicker.apps.benchmark.steps import _splits, group_structures, pooled
from hydrapicker.cli import main as cli_main
from hydrapicker.data.project import DatasetSpec
from hydrapicker.errors import HydraPickerError
from hydrapicker.evaluate import evaluate
from hydrapicker.io import Picks, write_picks

PROTOCOL = Path(__file__).resolve().parents[2] / "benchmarks" / "protocol.toml"


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bench.toml"
    structures = PROTOCOL.parent.parent / "data" / "structures"
    path.write_text(f'structures = "{structures}"\n' + text)
    return path


def test_recorded_protocol_holds_out_4hhb_6b7n_and_two_unseen_proteins_one_a_ring():
    config = load_config(PROTOCOL)
    groups = group_structures(config)
    ids = {g: {p.name.split(".")[0].split("_")[0] for p in files} for g, files in groups.items()}
    assert {"4hhb", "6b7n"} <= ids["targets"] and len(ids["targets"]) == 7
    assert "1jnb" in ids["unseen"] and len(ids["unseen"]) >= 2  # 1jnb: the C12 phi29 connector ring
    assert not (ids["sources"] & (ids["targets"] | ids["unseen"])) and "5a1a" not in ids["sources"]
    assert len(ids["sources"]) * config.source_conditions >= 20


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(HydraPickerError, match="missing field 'targets'"):
        load_config(_config_file(tmp_path, 'unseen = ["1hvr"]\n'))
    with pytest.raises(HydraPickerError, match="unknown field 'epoch'"):
        load_config(_config_file(tmp_path, 'targets = ["4hhb"]\nunseen = ["1hvr"]\nepoch = 3\n'))
    with pytest.raises(HydraPickerError, match="in both targets and unseen"):
        group_structures(load_config(_config_file(tmp_path, 'targets = ["4hhb"]\nunseen = ["4hhb"]\n')))
    with pytest.raises(HydraPickerError, match="'9zzz' is not in"):
        group_structures(load_config(_config_file(tmp_path, 'targets = ["9zzz"]\nunseen = ["1hvr"]\n')))
    with pytest.raises(HydraPickerError, match="too few"):
        load_config(_config_file(tmp_path, 'targets = ["4hhb"]\nunseen = ["1hvr"]\nmicrographs = 2\n'))
    with pytest.raises(HydraPickerError, match="field 'size_head' must be true or false, got 'yes'"):
        load_config(_config_file(tmp_path, 'targets = ["4hhb"]\nunseen = ["1hvr"]\nsize_head = "yes"\n'))


def test_splits_test_on_the_last_micrographs_and_few_shot_on_the_first():
    config = replace(load_config(PROTOCOL), test_micrographs=2, val_micrographs=1, few_shot_micrographs=2)
    stems = [f"m{i}" for i in range(6)]
    assert _splits(stems, "sources", config) == {"train": ("m0", "m1", "m2"), "val": ("m3",), "test": ("m4", "m5")}
    assert _splits(stems, "targets", config) == {"train": ("m0", "m1"), "val": ("m3",), "test": ("m4", "m5")}
    assert _splits(stems, "unseen", config) == {"train": (), "val": (), "test": ("m4", "m5")}


def test_pooled_curves_put_datasets_of_different_box_sizes_on_one_scale(tmp_path):
    # Dataset b is dataset a magnified 3x (coordinates and box): pooled over both, AP equals a's alone.
    rng = np.random.default_rng(0)
    tx, ty = rng.uniform(0, 500, 30), rng.uniform(0, 500, 30)
    px, py = tx + rng.normal(0, 4, 30), ty + rng.normal(0, 4, 30)
    score = rng.uniform(0, 1, 30)
    specs, truths, results = {}, {}, {}
    for name, k in (("a", 1.0), ("b", 3.0)):
        specs[name] = DatasetSpec(name, (), {}, "csv", 1.0, 20.0 * k, {"test": ("m",)})
        truths[name] = {"m": Picks("m", tx * k, ty * k, None, 20.0 * k)}
        (tmp_path / "picks" / "x").mkdir(parents=True, exist_ok=True)
        write_picks(tmp_path / "picks" / "x" / f"{name}.csv", [Picks("m", px * k, py * k, score)], "csv")
        results[name] = evaluate({"m": Picks("m", px * k, py * k, score)}, truths[name], box_size=20.0 * k)
    both = pooled(results, specs, tmp_path, "x", truths)
    assert results["a"].ap == pytest.approx(results["b"].ap)
    assert both.ap == pytest.approx(results["a"].ap)
    assert both.n_true == 60


def _tables(report: str) -> str:
    return report[: report.index("## Time")]


def test_quick_protocol_writes_four_tables_and_a_continued_run_reuses_every_result(tmp_path):
    config = load_config(PROTOCOL, quick=True)
    out = tmp_path / "bench"
    said: list[str] = []
    report = run_benchmark(config, out, say=said.append)
    text = report.read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4", "Robustness to the particle diameter"):
        assert heading in text
    for figure in ("table1.png", "table2.png", "table3.png", "table4.png", "diameter.png"):
        assert (out / "figures" / figure).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    generic = next(v for k, v in results["tables"].items() if k.startswith("Table 2"))["generic"]
    assert set(generic) == {"sim-4hhb-c0", "sim-6m03-c0"}
    for row in generic.values():
        assert 0.0 <= row["ap"] <= 1.0 and row["n_true"] > 0
    assert re.search(r"\| sim-4hhb-c0 \| [0-9.]+ \| [0-9.n/a]+ \| [0-9.]+ \|", text)  # generic and dog filled in

    # Continued after its micrographs are gone, with one result missing: only that is redone,
    # and only the group it needs is simulated again.
    for group in ("sources", "targets", "unseen"):
        shutil.rmtree(out / "data" / group)
    (out / "picks" / "dog" / "sim-6m03-c0.csv").unlink()
    said.clear()
    again = run_benchmark(config, out, say=said.append).read_text()
    assert _tables(again) == _tables(text)
    simulated = [line for line in said if line.startswith("simulating")]
    assert len(simulated) == 1 and simulated[0].startswith("simulating unseen")

    # The same folder with another protocol (the full one, not --quick) would mix the two: refused before
    # the run record is replaced; where it runs (threads, device) may change.
    record = (out / "protocol.json").read_bytes()
    with pytest.raises(HydraPickerError, match="holds a benchmark of another protocol"):
        run_benchmark(load_config(PROTOCOL), out)
    (out / "command.json").write_text('{"the": "quick run"}')
    assert cli_main(["benchmark", str(PROTOCOL), "--out", str(out)]) == 1
    assert (out / "command.json").read_text() == '{"the": "quick run"}'
    assert (out / "protocol.json").read_bytes() == record
    check_protocol(replace(config, threads=1, processes=1), out)
