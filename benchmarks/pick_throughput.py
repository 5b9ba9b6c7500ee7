"""Picking throughput of ``hydrapicker pick`` under torchrun with 1 and 2 processes, projected to a GPU cluster.

Usage:
  python benchmarks/pick_throughput.py [--n 40] [--procs 1,2] [--threads 1] [--model CKPT | --preset paper]
      [--device cpu|cuda] [--gpu-rate MICS_PER_S] [--gpus 64] [--total 100000] [--json OUT.json]

What it runs: ``--n`` copies of the bundled real 1024² β-galactosidase micrographs (PNG, 27-px
particles, so 1517² once rescaled to the model's 40-px particle), picked by the real command line,
``python -m torch.distributed.run --nproc-per-node P --standalone -m hydrapicker pick ...``, once per
P in ``--procs``, each process with ``--threads`` threads (OMP_NUM_THREADS) and ``--pick-workers`` readers,
into a fresh folder. Model: the shipped generic model (``tiny`` preset), a checkpoint (``--model``),
or a random-weight ``--preset`` (the cost does not depend on the weights).

What it reports, per P: micrographs/s over the whole command (process start, model load, the
merge of ``picks.csv``), micrographs/s while picking (what ``pick`` prints: micrographs over the
slowest rank's picking time), and the speed-up over the first P. Then three single-process
figures the projection needs: the network's seconds per micrograph (``head_outputs`` alone, on
``--device``), the CPU seconds to read + rescale + normalise one (``Picker.prepare``), and rank 0's
seconds per micrograph to merge ``picks.csv`` at the end (serial, so it does not shrink with ranks;
timed on 2,000 copies of this run's CSV files).

The projection to ``--gpus`` GPUs and ``--total`` micrographs assumes:
- ranks share nothing while picking (each reads its own micrographs; one barrier at the end), so
  the rate is the rate per GPU x GPUs, as the measured speed-up with processes checks;
- the rate per GPU is ``--gpu-rate`` when given, else, with ``--device cuda``, the best measured
  end-to-end picking rate of this run (ranks on the one GPU: ``pick`` uses gloo, so several
  ranks may share a GPU), else (CPU only) an upper bound, stated as such: the lower of the
  preset's conv FLOPs per micrograph at 25% of an H100's dense bf16 rate (~990 TFLOP/s) and the
  CPU readers' rate (``--workers`` threads / prepare seconds);
- the micrographs are like these (1024² PNGs, 1517² once rescaled); real 4096² MRCs cost more to
  read and prepare, so the file system must deliver ``GPUs x rate x bytes per micrograph``:
  printed for these files and for 4096² float32 MRCs (64 MiB), where it, not the GPUs, is
  usually the limit;
- plus rank 0's serial merge of ``picks.csv`` (measured per micrograph here) and the start-up
  measured here (process start, model load, rendezvous).

Measured 2026-11-25 (shipped generic model, ``tiny``, 102.5 GFLOP per micrograph; 1 thread per process):
- this 2-core machine, shared with other jobs (load ~5), ``--n 12``: 1 process 0.190 micrographs/s
  picking (0.174 over the whole 69 s command), 2 processes 0.230 (0.198): x1.21 (x1.14), the second
  core being mostly someone else's; the network alone 7.2 s per micrograph (~14 GFLOP/s).
- the 16-core CPU of the H100 machine, idle, ``--n 40``: 1 process 0.250, 2 processes 0.520: x2.08
  picking, x1.88 over the whole command (170 s -> 90 s).
- one H100 (torch 2.11, ``--device cuda --procs 1 --pick-workers 4 --threads 4``, ``--n 40``): 11.2
  micrographs/s picking (2.9 over the whole 13.8 s command: ~10 s of start-up); random-weight
  ``paper`` preset (2,558 GFLOP) 11.4; the network alone 0.015 s (tiny) and 0.040 s (paper) per
  micrograph, read + prepare 0.085-0.093 s of CPU, merge 0.16 ms per micrograph. So one rank keeps
  the GPU busy 17% (tiny) to 45% (paper) of the time: the per-micrograph work on the CPU
  (reading, preparing, decoding, writing) sets the rate, not the network.
- projection, 64 H100 x 100,000 such micrographs: 64 x 11.2 = 717 micrographs/s -> 2.3 min
  picking + 0.3 min merge + start-up (10 s on one node) = about 3 min, if the file system delivers
  330 MB/s for these 0.47 MB PNGs. Real 4096² float32 MRCs (64 MiB) would need 48 GB/s at that
  rate: the file system, not the GPUs, then sets the time (at 10 GB/s: 149 micrographs/s, 11 min).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BGAL = REPO / "src" / "hydrapicker" / "assets" / "real" / "empiar10017_bgal_bin4"
DIAMETER_PX = 27.0  # β-gal: 191 Å at 7.08 Å/px (the folder's README)
H100_DENSE_BF16_TFLOPS = 990.0
ASSUMED_GPU_EFFICIENCY = 0.25
MERGE_FILES = 2000


def make_micrographs(folder: Path, n: int) -> list[Path]:
    """``n`` copies of the bundled β-gal PNGs under distinct names (real files: pick resolves links)."""
    sources = sorted(BGAL.glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"bgal_{i:04d}.png"
        shutil.copyfile(sources[i % len(sources)], path)
        paths.append(path)
    return paths


def run_pick(mics: Path, out: Path, procs: int, threads: int, model: Path | None, device: str, workers: int) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(procs),
        "--standalone",
        "-m",
        "hydrapicker",
        "pick",
        str(mics),
        "--out",
        str(out),
        "--diameter-px",
        str(DIAMETER_PX),
        "--format",
        "star",
        "--workers",
        str(workers),
        "--device",
        device,
        *(["--model", str(model)] if model else []),
    ]
    t0 = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"pick with {procs} processes failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    found = re.search(r"picked (\d+) micrographs \((\d+) particles, ([0-9.]+) micrographs/s\)", result.stdout)
    assert found, result.stdout
    picked = int(found.group(1))
    return {
        "procs": procs,
        "threads": threads,
        "picked": picked,
        "particles": int(found.group(2)),
        "wall_s": round(wall, 2),
        "rate_wall": picked / wall,
        "rate_picking": float(found.group(3)),
    }


def single_process_costs(mics: list[Path], out: Path, model_path: Path | None, device: str, threads: int) -> dict:
    """Network seconds, CPU prepare seconds and merge seconds per micrograph, in this process."""
    from hydrapicker.checkpoint import load_checkpoint, load_model
    from hydrapicker.io.run_folder import rebuild_picks_csv
    from hydrapicker.particle_size import ParticleSize
    from hydrapicker.picking.inference import head_outputs
    from hydrapicker.picking.picker import Picker, PickSettings

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(model_path) if model_path else load_model(None)
    picker = Picker(model, meta, PickSettings(ParticleSize(diameter_px=DIAMETER_PX), device=device))
    sample = mics[:3]
    t0 = time.perf_counter()
    prepared = [picker.prepare(path) for path in sample]
    prepare_s = (time.perf_counter() - t0) / len(sample)
    head_outputs(picker.model, prepared[0].image, device=device)  # warm-up (cuDNN / oneDNN set-up)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for p in prepared:
        head_outputs(picker.model, p.image, device=device)  # returns on the CPU: synchronised
    network_s = (time.perf_counter() - t0) / len(prepared)
    # The merge of 2,000 per-micrograph CSVs (copies of this run's), so fixed costs do not count per file.
    merged = out.parent / "merge"
    sources = sorted((out / "csv").glob("*.csv"))
    (merged / "csv").mkdir(parents=True)
    for i in range(MERGE_FILES):
        shutil.copyfile(sources[i % len(sources)], merged / "csv" / f"m_{i:05d}.csv")
    t0 = time.perf_counter()
    rebuild_picks_csv(merged)
    merge_s = (time.perf_counter() - t0) / MERGE_FILES
    flops = _conv_flops(picker.model.cpu(), prepared[0].image.shape)
    return {
        "prepare_s": prepare_s,
        "network_s": network_s,
        "merge_s_per_micrograph": merge_s,
        "rescaled_shape": list(prepared[0].image.shape),
        "gflop_per_micrograph": flops / 1e9,
        "bytes_per_micrograph": float(np.mean([p.stat().st_size for p in sample])),
    }


def _conv_flops(model: torch.nn.Module, shape: tuple[int, int]) -> float:
    total = 0.0

    def hook(module: torch.nn.Conv2d, inputs, output) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2.0 * module.in_channels // module.groups * k * output.shape[1] * output.shape[2] * output.shape[3]

    convs = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and not name.startswith("heads.")]
    handles = [m.register_forward_hook(hook) for m in convs]
    with torch.inference_mode():
        model(torch.zeros(1, 1, *shape), "generic")
    for h in handles:
        h.remove()
    return total


def project(costs: dict, runs: list[dict], args: argparse.Namespace) -> dict:
    """Hours for ``args.total`` micrographs on ``args.gpus`` GPUs (see the module docstring)."""
    reader_rate = args.workers / costs["prepare_s"]
    if args.gpu_rate:
        gpu_rate, source = args.gpu_rate, "--gpu-rate (measured elsewhere)"
    elif args.device == "cuda":
        best = max(runs, key=lambda r: r["rate_picking"])
        gpu_rate = best["rate_picking"]
        source = f"measured here end to end: {best['procs']} rank(s) on this one GPU"
    else:
        tflops = H100_DENSE_BF16_TFLOPS * ASSUMED_GPU_EFFICIENCY
        flop_rate = tflops * 1e12 / (costs["gflop_per_micrograph"] * 1e9)
        gpu_rate = min(flop_rate, reader_rate)
        source = (
            f"an upper bound, not a measurement: the lower of {flop_rate:.0f} mic/s ({costs['gflop_per_micrograph']:.0f} GFLOP "
            f"at {tflops:.0f} TFLOP/s, 25% of H100 dense bf16) and the CPU readers' rate; give --gpu-rate"
        )
    picking_s = args.total / (args.gpus * gpu_rate)
    merge_s = args.total * costs["merge_s_per_micrograph"]
    last = runs[-1]
    startup_s = last["wall_s"] - last["picked"] / last["rate_picking"]  # import, model load, rendezvous, as measured
    return {
        "gpus": args.gpus,
        "micrographs": args.total,
        "gpu_rate": gpu_rate,
        "gpu_rate_source": source,
        "reader_rate_per_rank": reader_rate,
        "network_rate": 1.0 / costs["network_s"],
        "picking_s": picking_s,
        "merge_s": merge_s,
        "startup_s": startup_s,
        "total_s": picking_s + merge_s + startup_s,
        "fs_bandwidth_MBps_at_these_files": args.gpus * gpu_rate * costs["bytes_per_micrograph"] / 1e6,
        "fs_bandwidth_GBps_at_4096sq_float32": args.gpus * gpu_rate * 4096 * 4096 * 4 / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="micrographs (default: %(default)s)")
    parser.add_argument("--procs", default="1,2", help="process counts to run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (default: %(default)s)")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped generic model)")
    parser.add_argument("--preset", help="a random-weight model of this preset instead (e.g. paper)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--pick-workers", type=int, default=1, help="pick --workers (reader threads) per process in the runs"
    )
    parser.add_argument("--workers", type=int, default=4, help="reader threads per rank assumed in the projection")
    parser.add_argument("--gpu-rate", type=float, help="measured micrographs/s of one GPU rank, for the projection")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pick_throughput_") as tmp:
        root = Path(tmp)
        mics = make_micrographs(root / "mics", args.n)
        model = args.model
        if args.preset:
            from hydrapicker.checkpoint import save_checkpoint
            from hydrapicker.model import HydraPicker
            from hydrapicker.presets import get_preset
            from hydrapicker.training.config import TrainConfig
            from hydrapicker.training.loop import _checkpoint

            torch.manual_seed(0)
            model = root / f"{args.preset}.pt"
            save_checkpoint(
                model, _checkpoint(HydraPicker(get_preset(args.preset)), TrainConfig(preset=args.preset), 1, 0, None)
            )
        print(
            f"{args.n} micrographs of 1024² (β-gal PNG copies), {args.threads} thread(s) per process, device {args.device}, "
            f"model {model or 'shipped generic'}; torch {torch.__version__}",
            flush=True,
        )
        runs = []
        for procs in map(int, args.procs.split(",")):
            row = run_pick(
                root / "mics", root / f"out_{procs}", procs, args.threads, model, args.device, args.pick_workers
            )
            row["speedup_picking"] = row["rate_picking"] / (runs[0]["rate_picking"] if runs else row["rate_picking"])
            row["speedup_wall"] = row["rate_wall"] / (runs[0]["rate_wall"] if runs else row["rate_wall"])
            runs.append(row)
            print(
                f"{procs} process(es): {row['rate_wall']:.3f} micrographs/s over the whole command ({row['wall_s']} s), "
                f"{row['rate_picking']:.3f} while picking; speed-up x{row['speedup_wall']:.2f} whole, "
                f"x{row['speedup_picking']:.2f} picking",
                flush=True,
            )
        costs = single_process_costs(mics, root / f"out_{runs[0]['procs']}", model, args.device, args.threads)
        print(
            f"one micrograph ({costs['rescaled_shape'][0]}x{costs['rescaled_shape'][1]} rescaled, "
            f"{costs['gflop_per_micrograph']:.1f} GFLOP): network {costs['network_s']:.3f} s on {args.device}, "
            f"read+prepare {costs['prepare_s']:.3f} s CPU, merge into picks.csv {1e3 * costs['merge_s_per_micrograph']:.2f} ms",
            flush=True,
        )
        plan = project(costs, runs, args)
        hours = plan["total_s"] / 3600
        print(
            f"projection, {plan['gpus']} GPUs x {plan['micrographs']} micrographs: {plan['gpu_rate']:.1f} mic/s per GPU "
            f"({plan['gpu_rate_source']}; the network alone {plan['network_rate']:.1f} mic/s on {args.device}, "
            f"{args.workers} reader threads {plan['reader_rate_per_rank']:.1f} mic/s) -> picking {plan['picking_s'] / 60:.1f} min "
            f"+ rank 0's merge {plan['merge_s'] / 60:.1f} min + start-up {plan['startup_s']:.0f} s = {hours:.2f} h; "
            f"the file system must deliver {plan['fs_bandwidth_MBps_at_these_files']:.0f} MB/s at these PNGs, "
            f"{plan['fs_bandwidth_GBps_at_4096sq_float32']:.0f} GB/s at 4096² float32 MRCs"
        )
        if args.json:
            args.json.write_text(json.dumps({"runs": runs, "costs": costs, "projection": plan}, indent=1) + "\n")


if __name__ == "__main__":
    main()
