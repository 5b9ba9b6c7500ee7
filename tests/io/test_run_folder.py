"""The pick output folder's record: typed and versioned when written now, and records written before still read."""

from __future__ import annotations

import json

from hydrapicker.io.run_folder import RUN_RECORD_FORMAT, RunRecord, current_threshold

# command.json as `hydrapicker pick` wrote it before the record had a format tag: argparse's vars()
OLD_RECORD = {
    "hydrapicker_version": "0.1.0",
    "time": "2025-01-01T00:00:00+00:00",
    "command_line": ["hydrapicker", "pick", "mics/*.png", "--out", "out"],
    "python": "3.11.7",
    "options": {
        "verb": "pick", "micrographs": ["mics/*.png"], "out": "out", "model": None, "head": "generic",
        "diameter_px": None, "diameter_A": 191.0, "pixel_size": 7.08, "threshold": 0.35, "nms_iou": 0.3,
        "refine_radius": 0.25, "whole_boxes": False, "fixed_diameter": False, "format": ["star", "box"],
        "overlay": "out/overlays", "overwrite": False, "device": "cpu", "workers": 2, "tile": 1024, "bf16": False,
        "watch": False, "idle": None, "poll": 5.0,
    },
}  # fmt: skip


def test_a_record_written_before_the_format_tag_reads_with_the_fields_other_verbs_need(tmp_path):
    (tmp_path / "command.json").write_text(json.dumps(OLD_RECORD))
    record = RunRecord.read(tmp_path)
    assert record is not None and record.format == "hydrapicker-run/1"
    assert record.threshold == 0.35 and record.formats == ["star", "box"] and record.overlay == "out/overlays"
    assert record.micrographs == ["mics/*.png"] and abs(record.box_size - 191.0 / 7.08) < 1e-12
    assert current_threshold(tmp_path) == 0.35


def test_a_record_round_trips_with_its_format_tag_and_a_set_threshold_wins(tmp_path):
    RunRecord(verb="pick", options={"threshold": 0.5, "diameter_px": 27.0, "format": ["star"]}).write(tmp_path)
    data = json.loads((tmp_path / "command.json").read_text())
    assert data["format"] == RUN_RECORD_FORMAT and data["verb"] == "pick"
    record = RunRecord.read(tmp_path)
    assert record.threshold == 0.5 and record.box_size == 27.0 and record.formats == ["star"]
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 0.2}))
    assert current_threshold(tmp_path) == 0.2


def test_no_record_is_none(tmp_path):
    assert RunRecord.read(tmp_path) is None and current_threshold(tmp_path) is None
