"""The benchmark's ``REPORT.md``: tables, curves and the diameter-error section."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hydrapicker import __version__
from hydrapicker.data.project import DatasetSpec
from hydrapicker.defaults import NMS_IOU, REFINE_RADIUS
from hydrapicker.evaluate import Evaluation
from hydrapicker.io.files import atomic_write_text, save_figure

__all__ = ["Table", "write_report"]

import torch

from hydrapicker.apps.benchmark.config import BenchmarkConfig
from hydrapicker.apps.benchmark.steps import (
    group_structures,
    picked_diameters,
    train_config,
)


@dataclass
class Table:
    title: str
    caption: str
    rows: list[str]  # dataset names
    columns: dict[str, str]  # method key -> column label
    results: dict[str, dict[str, Evaluation | str]]  # method -> dataset -> result
    curves: dict[str, Evaluation | None]


# --- the report -----------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _cell(result: Evaluation | str | None, field_name: str) -> str:
    if result is None:
        return "–"
    if isinstance(result, str):
        return "n/a"
    value = getattr(result, field_name)
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def _table_markdown(t: Table) -> list[str]:
    methods = list(t.columns)
    header = "| dataset | " + " | ".join(f"{t.columns[m]} AP | {t.columns[m]} AUROC" for m in methods) + " |"
    lines = [f"### {t.title}", "", t.caption, "", header, "|---|" + "---:|" * (2 * len(methods))]
    for name in t.rows:
        cells = [f"{_cell(t.results[m].get(name), 'ap')} | {_cell(t.results[m].get(name), 'auroc')}" for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = []
    for m in methods:
        got = [t.results[m][n] for n in t.rows if isinstance(t.results[m].get(n), Evaluation)]
        full = len(got) == len(t.rows)
        ap, auroc = _mean([g.ap for g in got]), _mean([g.auroc for g in got])
        mark = "" if full else f" ({len(got)}/{len(t.rows)})"
        means.append(f"**{ap:.3f}**{mark} | **{auroc:.3f}**{mark}" if got else "n/a | n/a")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    failures = sorted({r for m in methods for r in t.results[m].values() if isinstance(r, str)})
    lines += [""] + [f"n/a: {reason}" for reason in failures]
    return lines


def _plot_curves(path: Path, t: Table) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pr, roc) = plt.subplots(1, 2, figsize=(10, 4.2))
    for method, ev in t.curves.items():
        if ev is None:
            continue
        label = f"{t.columns[method]} (AP {ev.ap:.3f})"
        pr.plot(ev.recall, ev.precision, label=label)
        roc.plot(ev.fpr, ev.tpr, label=f"{t.columns[method]} (AUROC {ev.auroc:.3f})")
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall (pooled)")
    roc.set(
        xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02), title="ROC (pooled)"
    )
    pr.legend(fontsize=8, loc="lower left")
    roc.legend(fontsize=8, loc="lower right")
    fig.suptitle(t.title, fontsize=10)
    save_figure(fig, path, dpi=90)


#: The curves of the diameter-error section: picks with the size head's correction, and the diameter used as given.
_DIAMETER_KINDS = {"generic": "size corrected", "fixed": "diameter as given"}


def _diameter_method(kind: str, error: float) -> str:
    """The picks folder of one point of a diameter curve (the true diameter's is the kind itself: Table 2's picks)."""
    return kind if error == 0 else f"{kind}-d{error:+.2f}"


def _plot_diameter(path: Path, curves: dict[str, dict[float, dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, curve in curves.items():
        errors = sorted(curve)
        style = "-" if kind == "generic" else "--"
        for key, label, colour in (("targets", "targets", "C0"), ("unseen", "unseen proteins", "C1")):
            ax.plot(
                [100 * e for e in errors],
                [curve[e][key] for e in errors],
                style,
                marker="o",
                color=colour,
                label=f"{label}, {_DIAMETER_KINDS[kind]}",
            )
    ax.axhline(
        curves["generic"][0.0]["targets"] - 0.05, color="grey", linestyle=":", label="targets at true size − 0.05"
    )
    ax.set(xlabel="error of the given particle diameter (%)", ylabel="zero-shot AP (generic head)", ylim=(0, 1))
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=90)


def write_report(
    out_dir: Path,
    config: BenchmarkConfig,
    tables: list[Table],
    diameter: dict,
    real_results: dict,
    reals: list[DatasetSpec],
    timings: dict[str, float],
    config_path: str | None,
    n_targets: int,
    truths_px: dict[str, float],
) -> Path:
    """``REPORT.md`` and its figures (``figures/*.png``) in ``out_dir``; ``truths_px``: each dataset's true diameter (px)."""
    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    groups = group_structures(config)
    lines = [
        "# HydraPicker benchmark report",
        "",
        f"Written by `hydrapicker benchmark {config_path or 'CONFIG'} --out {out_dir}` (hydrapicker {__version__}, "
        f"torch {torch.__version__}, device {config.device}"
        + (f" = {torch.cuda.get_device_name(0)}" if config.device == "cuda" else "")
        + ").",
        "",
        "## Protocol",
        "",
        f"- Sources ({len(groups['sources'])} structures × {config.source_conditions} imaging conditions): "
        + ", ".join(sorted(p.name.split(".")[0] for p in groups["sources"])),
        f"- Targets ({len(groups['targets'])} × {config.target_conditions}): " + ", ".join(config.targets),
        "- Unseen proteins (in no training run): " + ", ".join(config.unseen),
        f"- Excluded from every group: {', '.join(config.exclude) or 'none'} (see the config for why).",
        f"- {config.micrographs} simulated micrographs of {config.size}² per source dataset, {config.target_micrographs} per target; "
        f"per dataset the last {config.test_micrographs} are test, {config.val_micrographs} validation; a target trains on "
        f"{config.few_shot_micrographs} micrographs. Seed {config.seed}.",
        f"- Multi-head model: preset `{config.preset}`, stage 1 {config.epochs} epochs, stage 2 {config.stage2_epochs} epochs, "
        f"{config.batches_per_epoch} batches of 4 crops each (Adam lr {train_config(config).lr:g}, then SGD lr "
        f"{train_config(config).stage2_lr:g} with momentum), scale jitter {tuple(config.scale_jitter)}"
        f"{', with a size head' if config.size_head else ''}. Single models (no size head): "
        f"{config.single_epochs} × {config.single_batches} batches from scratch. Few-shot heads: {config.finetune_epochs} × "
        f"{config.finetune_batches} batches.",
        "- Scores: `hydrapicker.evaluate` (IoU ≥ 0.6 with the true diameter as box, AP all-point interpolated, AUROC with "
        f"misses at −∞), picks kept down to score 0.001 (NMS IoU {NMS_IOU:g}, centres refined within {REFINE_RADIUS:g} box). The mean is over datasets; the curves pool every dataset of a table "
        "(coordinates in units of each dataset's box).",
        "",
        "## Tables",
        "",
    ]
    for i, t in enumerate(tables, 1):
        lines += _table_markdown(t)
        figure = figures / f"table{i}.png"
        _plot_curves(figure, t)
        lines += ["", f"![{t.title}](figures/{figure.name})", ""]
    lines += [
        "## Robustness to the particle diameter",
        "",
        "Zero-shot picks of the generic head with the diameter given to `pick` off by the error shown. "
        + (
            "'Size corrected' is `pick`'s default: the model's size head reads how large the particles look and "
            "corrects the diameter once per dataset, read over its micrographs (images only, as `pick` reads it once over "
            "the micrographs of a run); 'as given' is `pick --fixed-diameter`. 'Picked at' is the diameter "
            "the corrected picks were made at over the true one (mean over the target micrographs)."
            if "fixed" in diameter
            else "The model has no size head: the diameter is used as given."
        ),
        "",
    ]
    target_names = {name for name in tables[1].rows[:n_targets]}
    curves: dict[str, dict[float, dict[str, float]]] = {}
    for kind, by_error in diameter.items():
        curves[kind] = {}
        for error, results in sorted(by_error.items()):
            good = {n: r for n, r in results.items() if isinstance(r, Evaluation)}
            curves[kind][error] = {
                "targets": _mean([r.ap for n, r in good.items() if n in target_names]),
                "unseen": _mean([r.ap for n, r in good.items() if n not in target_names]),
                "auroc_targets": _mean([r.auroc for n, r in good.items() if n in target_names]),
                "picked_at": _mean(
                    [
                        d / truths_px[n]
                        for n in target_names
                        for d in picked_diameters(out_dir, _diameter_method(kind, error), n)
                    ]
                ),
            }
    kinds = list(curves)
    header = (
        "| diameter error | "
        + " | ".join(
            f"AP targets ({_DIAMETER_KINDS[k]}) | AP unseen ({_DIAMETER_KINDS[k]}) | AUROC targets ({_DIAMETER_KINDS[k]})"
            for k in kinds
        )
        + (" | picked at / true (targets) |" if "fixed" in curves else " |")
    )
    lines += [header, "|---:|" + "---:|" * (3 * len(kinds) + ("fixed" in curves))]
    for error in sorted(curves["generic"]):
        cells = [
            f"{curves[k][error]['targets']:.3f} | {curves[k][error]['unseen']:.3f} | {curves[k][error]['auroc_targets']:.3f}"
            for k in kinds
        ]
        extra = f" | ×{curves['generic'][error]['picked_at']:.2f}" if "fixed" in curves else ""
        lines.append(f"| {100 * error:+.0f} % | " + " | ".join(cells) + extra + " |")
    lines.append("")
    for kind in kinds:
        drop = max(curves[kind][0.0]["targets"] - curves[kind][e]["targets"] for e in curves[kind])
        lines.append(
            f"Largest drop of the mean target AP from the true diameter, {_DIAMETER_KINDS[kind]}: {drop:.3f} "
            "(goal: at most 0.05 for −20 % and +25 %)."
        )
    lines += ["", "![AP against diameter error](figures/diameter.png)", ""]
    _plot_diameter(figures / "diameter.png", curves)
    if reals:
        labels = {
            "shipped": "shipped model",
            "generic": "this run's generic head",
            **{n: n for n, _ in config.baselines},
        }
        t = Table(
            "Zero-shot on real micrographs",
            "",
            [s.name for s in reals],
            labels,
            {m: real_results[m] for m in labels},
            {},
        )
        lines += (
            [
                "## Zero-shot on the bundled real micrographs",
                "",
                "Neither model was trained on real micrographs or on the protein of EMPIAR-10017 (5a1a excluded). "
                "The EMPIAR-10025 labels are partial: unlabelled true particles count as false picks, so its AP is a lower bound.",
                "",
            ]
            + _table_markdown(t)[4:]
            + [""]
        )
    lines += ["## Time", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += [
        "",
        "Seconds summed over every run into the output folder (a continued run adds only the steps it ran; "
        "a run on another machine, e.g. baselines added later on a CPU, adds its own seconds).",
        "",
    ]
    report = out_dir / "REPORT.md"
    atomic_write_text(report, "\n".join(lines))
    summary = {
        "tables": {
            t.title: {
                m: {n: (r.to_json() if isinstance(r, Evaluation) else r) for n, r in t.results[m].items()}
                for m in t.columns
            }
            for t in tables
        },
        "diameter": {kind: {str(e): c for e, c in curve.items()} for kind, curve in curves.items()},
        "timings": timings,
    }
    atomic_write_text(out_dir / "results.json", json.dumps(summary, indent=1) + "\n")
    return report
