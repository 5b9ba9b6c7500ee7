"""The issue-6 "done when" check: pick the three bundled EMPIAR-10017 micrographs with a trained model.

Usage: python benchmarks/pick_real/run.py MODEL OUT_DIR
(MODEL from benchmarks/pick_real/train.py, trained on two of the three micrographs.)

1. ``hydrapicker pick`` at a very low threshold (the full ranking) into OUT_DIR/ranking, and at the
   default threshold with overlays into OUT_DIR/default;
2. ``hydrapicker evaluate`` of the STAR files against the labels (27-px boxes): AP and best-F1
   threshold, separately for the held-out micrograph (a test figure) and the two training ones
   (training-set figures);
3. starfile reads the STAR files (RELION column names printed);
4. tiles vs whole image on the real data: the held-out micrograph rescaled (1517² px) picked whole
   and in 768-px tiles, once with the whole-image GroupNorm statistics frozen (equal by
   construction) and once as the pipeline does for micrographs larger than a tile (statistics
   of the central 768² window): max |score difference| over all anchors and the change in picks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydrapicker.cli import main as cli
from hydrapicker.data.project import load_project
from hydrapicker.defaults import PICK_THRESHOLD

HERE = Path(__file__).resolve().parent


def main(model: Path, out: Path) -> None:
    import starfile
    import torch

    from hydrapicker.checkpoint import load_checkpoint
    from hydrapicker.io import read_micrograph
    from hydrapicker.particle_size import ParticleSize
    from hydrapicker.picking.decode import picks_from_outputs
    from hydrapicker.picking.inference import head_outputs
    from hydrapicker.preprocess import prepare_micrograph

    spec = load_project(HERE / "empiar10017.toml")[0]
    folder = spec.micrographs[0].parent
    size = ["--diameter-A", str(spec.diameter), "--pixel-size", str(spec.pixel_size)]
    assert (
        cli(["pick", str(folder), "--out", str(out / "ranking"), "--model", str(model), "--threshold", "0.001", *size])
        == 0
    )
    assert (
        cli(
            [
                "pick",
                str(folder),
                "--out",
                str(out / "default"),
                "--model",
                str(model),
                *size,
                "--overlay",
                str(out / "default" / "overlays"),
            ]
        )
        == 0
    )
    for role, stems in (("held-out (test)", spec.splits["test"]), ("training", spec.splits["train"])):
        for run in ("ranking", "default"):
            picks = [str(out / run / "star" / f"{stem}.star") for stem in stems]
            truth = [str(folder / f"{stem}.csv") for stem in stems]
            print(f"== {role} micrographs, threshold {'0.001' if run == 'ranking' else PICK_THRESHOLD}:", flush=True)
            cli(
                [
                    "evaluate",
                    *picks,
                    "--truth",
                    *truth,
                    "--box",
                    "27",
                    "--json",
                    str(out / f"eval_{run}_{role.split()[0]}.json"),
                ]
            )
    table = starfile.read(out / "default" / "star" / f"{spec.splits['test'][0]}.star")
    print("STAR columns (starfile):", list(table.columns))

    net, meta = load_checkpoint(model)
    stem = spec.splits["test"][0]
    image = read_micrograph(spec.micrograph_path(stem)).data
    scale = ParticleSize(diameter_A=spec.diameter, pixel_size=spec.pixel_size).scale(meta.target_diameter_px)
    prepared = prepare_micrograph(image, scale, meta.target_diameter_px)
    whole = head_outputs(net, prepared, tile_size=4096)
    frozen_whole = head_outputs(net, prepared, tile_size=768, stats_size=4096)
    window = head_outputs(net, prepared, tile_size=768)
    result = {"rescaled_shape": list(prepared.shape)}
    for name, tiled in (("whole_stats", frozen_whole), ("central_768_window_stats", window)):
        d = (torch.sigmoid(tiled[2]) - torch.sigmoid(whole[2])).abs()
        a = picks_from_outputs(whole, meta, scale, image.shape, PICK_THRESHOLD)
        b = picks_from_outputs(tiled, meta, scale, image.shape, PICK_THRESHOLD)
        common = {(round(x, 1), round(y, 1)) for x, y in zip(a.x, a.y)} & {
            (round(x, 1), round(y, 1)) for x, y in zip(b.x, b.y)
        }
        result[name] = {
            "max_abs_score_diff": float(d.max()),
            "mean_abs_score_diff": float(d.mean()),
            "picks_whole": len(a),
            "picks_tiled": len(b),
            "same_position_0.1px": len(common),
        }
    print("tiles vs whole:", json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
