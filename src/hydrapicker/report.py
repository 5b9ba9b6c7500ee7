"""The visual report of a pick run: one self-contained HTML page to judge the picks and choose a threshold.

The page (``PICKS_DIR/report.html``) needs no server and loads nothing from outside: thumbnails of
the micrographs are PNG data URIs (contrast-stretched and block-averaged as
:func:`hydrapicker.picking.overlay.overlay_image` does), the picks are JSON drawn as boxes on a canvas by inline
JavaScript, and a slider over the score threshold redraws the boxes and updates the per-micrograph
counts, the total and the score histogram (inline SVG) as it moves. The page carries each
micrograph's count at every slider position (steps of :data:`SLIDER_STEP`), counted here, and the
picks themselves only for the micrographs it draws, so its size grows with the number of
micrographs, not of candidates.

Scores come from ``PICKS_DIR/candidates/<stem>.csv`` (every candidate down to
:data:`hydrapicker.defaults.CANDIDATE_FLOOR`, so the slider can go below the run's threshold) or,
for runs without it, ``PICKS_DIR/csv/<stem>.csv`` (the picks at the run's threshold only). The
micrographs are those of the run record ``PICKS_DIR/command.json`` or given explicitly.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hydrapicker import __version__
from hydrapicker.defaults import CANDIDATE_FLOOR, PICK_THRESHOLD
from hydrapicker.errors import HydraPickerError
from hydrapicker.io.coordinates import read_picks
from hydrapicker.io.files import atomic_write_text, refuse_overwriting_inputs
from hydrapicker.io.micrograph import expand_micrographs, micrograph_stem, read_micrograph
from hydrapicker.io.picks import Picks
from hydrapicker.io.run_folder import RunRecord, read_sidecar, tables
from hydrapicker.picking.overlay import overlay_image

__all__ = ["REPORT_NAME", "RunPicks", "read_run_picks", "write_report"]

#: The report's file name inside the picks folder.
REPORT_NAME = "report.html"

#: Bins of the score histogram between the lowest score on the page and 1.
HISTOGRAM_BINS = 50

#: The slider moves in steps of this score; counts are exact at every step.
SLIDER_STEP = 0.001


@dataclass
class RunPicks:
    """The picks of one micrograph of a run, with what the page needs to draw them.

    Attributes:
        picks: every pick (candidate) with its score, in the micrograph's stored frame.
        path: the micrograph file, or ``None`` when it was not found.
        source: the CSV the picks came from.
    """

    picks: Picks
    path: Path | None
    source: Path


def _run_record(picks_dir: Path) -> RunRecord:
    """The run record of ``picks_dir`` (an empty one when there is none)."""
    return RunRecord.read(picks_dir) or RunRecord(verb="", options={})


def _micrograph_paths(
    picks_dir: Path, patterns: Sequence[str | os.PathLike] | None, record: RunRecord
) -> dict[str, Path]:
    """``{stem: file}`` from explicit patterns, else the run record's micrographs."""
    if patterns is None:
        patterns = record.micrographs
        if not patterns:
            raise HydraPickerError(f"{picks_dir}: no command.json naming the micrographs; give them with --micrographs")
        try:
            paths = expand_micrographs(patterns)
        except HydraPickerError as exc:
            raise HydraPickerError(
                f"{picks_dir}/command.json: {exc} (give the micrographs with --micrographs)"
            ) from exc
    else:
        paths = expand_micrographs(patterns)
    return {micrograph_stem(p): Path(p) for p in paths}


def read_run_picks(
    picks_dir: str | os.PathLike, micrographs: Sequence[str | os.PathLike] | None = None
) -> tuple[list[RunPicks], RunRecord]:
    """Every micrograph's picks in a pick output folder, and the run's record (``command.json``).

    Raises:
        HydraPickerError: no such folder, no picks in it, or micrographs that cannot be found.
    """
    picks_dir = Path(picks_dir)
    if not picks_dir.is_dir():
        raise HydraPickerError(f"{picks_dir}: no such picks folder")
    sources = {p.stem: p for p in tables(picks_dir / "csv")}
    sources.update({p.stem: p for p in tables(picks_dir / "candidates")})  # candidates win
    if not sources:
        raise HydraPickerError(
            f"{picks_dir}: no picks in csv/ or candidates/ (run `hydrapicker pick --out {picks_dir}` first)"
        )
    record = _run_record(picks_dir)
    paths = _micrograph_paths(picks_dir, micrographs, record)
    out = []
    for stem, source in sorted(sources.items()):
        picks = read_picks(source, "csv", micrograph=stem)[stem]
        sidecar = source.with_suffix(".json")
        if (
            source.parent.name == "candidates" and sidecar.is_file()
        ):  # candidates/<stem>.json: box size and shape of the micrograph
            picks.box_size, picks.shape = read_sidecar(sidecar)
        out.append(RunPicks(picks, paths.get(stem), source))
    return out, record


def _thumbnail(path: Path, max_size: int) -> tuple[str, int, tuple[int, int]]:
    """A grey PNG data URI of the micrograph, its reduction factor and the micrograph's shape."""
    data = read_micrograph(path).data
    image = overlay_image(data, Picks.empty(path.stem), max_size).convert("L")
    factor = max(1, -(-max(data.shape) // max_size))  # the whole factor overlay_image reduces by
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), factor, data.shape


def _histogram_svg(scores: np.ndarray, low: float, width: int = 640, height: int = 160) -> str:
    """Score histogram as inline SVG: one ``rect.bar`` per bin with its lower edge in ``data-low``."""
    edges = np.linspace(low, 1.0, HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(np.clip(scores, low, 1.0), bins=edges)
    top = max(int(counts.max()), 1) if len(counts) else 1
    plot_h, bar_w = height - 20, width / HISTOGRAM_BINS
    bars = []
    for i, count in enumerate(counts):
        h = plot_h * count / top
        bars.append(
            f'<rect class="bar" data-low="{edges[i]:.6f}" x="{i * bar_w:.2f}" y="{plot_h - h:.2f}" '
            f'width="{bar_w - 1:.2f}" height="{h:.2f}"><title>{edges[i]:.3f}-{edges[i + 1]:.3f}: {count}</title></rect>'
        )
    return (
        f'<svg id="histogram" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'data-width="{width}" role="img" aria-label="score histogram">'
        + "".join(bars)
        + f'<line id="threshold-line" x1="0" x2="0" y1="0" y2="{plot_h}"/>'
        + f'<text x="0" y="{height - 4}">{low:.2f}</text><text x="{width}" y="{height - 4}" text-anchor="end">1.00</text>'
        + f'<text x="{width / 2}" y="{height - 4}" text-anchor="middle">score (tallest bin: {top})</text></svg>'
    )


def write_report(
    picks_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    micrographs: Sequence[str | os.PathLike] | None = None,
    thumbnails: int = 24,
    thumbnail_size: int = 512,
    box_size: float | None = None,
    threshold: float | None = None,
) -> Path:
    """Write the report page of a pick output folder; returns its path (default ``PICKS_DIR/report.html``).

    Args:
        picks_dir: the ``--out`` folder of ``hydrapicker pick`` (or of a RELION External job).
        out: where to write the page.
        micrographs: micrograph files, folders or globs; default: those of ``command.json``.
        thumbnails: how many micrographs get a thumbnail with their picks drawn (the first ones by
            name); every micrograph is counted in the table and the histogram.
        thumbnail_size: long side of a thumbnail at most, in px.
        box_size: box edge in stored px, for runs whose files do not record it.
        threshold: where the slider starts; default: the run's ``--threshold``.
    """
    picks_dir = Path(picks_dir)
    if thumbnails < 0 or thumbnail_size < 16:
        raise HydraPickerError(
            f"thumbnails must be >= 0 and thumbnail size >= 16 px, got {thumbnails} and {thumbnail_size}"
        )
    runs, record = read_run_picks(picks_dir, micrographs)
    fallback_box = box_size if box_size is not None else record.box_size
    if threshold is None:
        threshold = record.threshold if record.threshold is not None else PICK_THRESHOLD
    elif not 0 <= threshold <= 1:
        raise HydraPickerError(f"threshold must be a score between 0 and 1, got {threshold}")
    scores = np.concatenate([r.picks.score for r in runs]) if runs else np.zeros(0)
    low = float(min(CANDIDATE_FLOOR, scores.min() if len(scores) else CANDIDATE_FLOOR, threshold))
    low = np.floor(round(low / SLIDER_STEP, 6)) * SLIDER_STEP  # on the slider's grid
    # The slider's positions, each the double nearest its decimal value, as the browser parses it.
    grid = np.round(low + SLIDER_STEP * np.arange(int(round((1 - low) / SLIDER_STEP)) + 1), 6)
    entries = []
    missing = []
    for i, run in enumerate(runs):
        p = run.picks
        ordered = np.sort(p.score)
        entry = {
            "name": p.micrograph,
            "counts": (len(ordered) - np.searchsorted(ordered, grid, side="left")).tolist(),  # scores >= each position
            "n": len(p),
            "box": p.box_size or fallback_box,
            "src": None,
            "factor": 1,
        }
        if run.path is None:
            missing.append(p.micrograph)
        elif i < thumbnails:
            try:
                entry["src"], entry["factor"], _ = _thumbnail(run.path, thumbnail_size)
            except HydraPickerError:  # deleted or damaged since it was picked: counted, not drawn
                missing.append(p.micrograph)
                entries.append(entry)
                continue
            entry.update(x=np.round(p.x, 1).tolist(), y=np.round(p.y, 1).tolist(), s=p.score.tolist())
        entries.append(entry)
    page = _PAGE.format(
        title=html.escape(f"HydraPicker picks: {picks_dir.resolve().name}"),
        folder=html.escape(str(picks_dir.resolve())),
        n=len(runs),
        n_thumbs=sum(e["src"] is not None for e in entries),
        low=f"{low:.6g}",
        step=SLIDER_STEP,
        threshold=f"{grid[int(np.clip(round((threshold - low) / SLIDER_STEP), 0, len(grid) - 1))]:.6g}",
        source="candidates (every score down to the floor)"
        if any(r.source.parent.name == "candidates" for r in runs)
        else "csv (the picks at the run's threshold only)",
        missing=(
            f'<p class="warn">No readable micrograph file for {len(missing)} of them: '
            f"{html.escape(', '.join(missing[:10]))}{' ...' if len(missing) > 10 else ''}</p>"
        )
        if missing
        else "",
        histogram=_histogram_svg(scores, low),
        rows="".join(
            f'<tr><td>{html.escape(e["name"])}</td><td class="count" data-name="{html.escape(e["name"])}"></td>'
            f"<td>{e['n']}</td></tr>"
            for e in entries
        ),
        data=json.dumps(entries, separators=(",", ":")).replace("</", "<\\/"),
        stamp=html.escape(f"hydrapicker {__version__}, {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}"),
    )
    target = Path(out) if out is not None else picks_dir / REPORT_NAME
    inputs = [*(r.source for r in runs), *(r.source.with_suffix(".json") for r in runs), picks_dir / "command.json"]
    refuse_overwriting_inputs([target], inputs + [r.path for r in runs if r.path is not None], "report")
    atomic_write_text(target, page)
    return target


# The page: CSS, markup and script, all inline. Boxes are drawn like pick.overlay_image draws them:
# stored pixel x covers [x - 0.5, x + 0.5), thumbnail pixel u covers stored [u f - 0.5, (u + 1) f - 0.5).
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; margin-bottom: 0.2em; }}
.meta, .warn {{ color: #555; font-size: 0.9em; margin: 0.2em 0; }}
.warn {{ color: #a40; }}
#controls {{ position: sticky; top: 0; background: #fff; padding: 0.6em 0; border-bottom: 1px solid #ddd; z-index: 1; }}
#threshold {{ width: 24em; vertical-align: middle; }}
#summary {{ font-size: 1.1em; margin-left: 1em; }}
#histogram rect.bar {{ fill: #bbb; }}
#histogram rect.bar.kept {{ fill: #2a2; }}
#histogram line {{ stroke: #c00; stroke-width: 2; }}
#histogram text {{ font-size: 11px; fill: #555; }}
.layout {{ display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; margin-top: 1em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ padding: 0.15em 0.6em; border-bottom: 1px solid #eee; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.tablebox {{ max-height: 22em; overflow-y: auto; }}
#thumbs {{ display: flex; flex-wrap: wrap; gap: 1em; margin-top: 1em; }}
figure {{ margin: 0; }}
figcaption {{ font-size: 0.8em; color: #444; max-width: 512px; overflow-wrap: anywhere; }}
canvas {{ border: 1px solid #ccc; max-width: 100%; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="meta">{n} micrographs from {folder}; scores from {source}; thumbnails for {n_thumbs}.</p>
{missing}
<div id="controls">
<label for="threshold">Score threshold <output id="threshold-value">{threshold}</output></label>
<input type="range" id="threshold" min="{low}" max="1" step="{step}" value="{threshold}">
<span id="summary"><b id="total-count"></b> picks at or above the threshold</span>
</div>
<div class="layout">
<div>{histogram}</div>
<div class="tablebox"><table>
<thead><tr><th>micrograph</th><th>picks</th><th>candidates</th></tr></thead>
<tbody>{rows}</tbody>
</table></div>
</div>
<div id="thumbs"></div>
<p class="meta">Made by {stamp}.</p>
<script type="application/json" id="report-data">{data}</script>
<script>
"use strict";
const runs = JSON.parse(document.getElementById("report-data").textContent);
const slider = document.getElementById("threshold");
const thumbs = document.getElementById("thumbs");
const histogram = document.getElementById("histogram");
const width = parseFloat(histogram.dataset.width);
const low = parseFloat(slider.min), step = parseFloat(slider.step);

// The slider's position as (index into each run's counts, score threshold on the same grid as the counts).
function position() {{
  const k = Math.round((parseFloat(slider.value) - low) / step);
  return [k, Math.round((low + k * step) * 1e6) / 1e6];
}}

function draw(run, t) {{
  if (!run.image || !run.image.complete) return;
  const ctx = run.canvas.getContext("2d");
  ctx.drawImage(run.image, 0, 0);
  ctx.strokeStyle = "rgb(0, 255, 0)";
  ctx.lineWidth = 1;
  const f = run.factor, h = (run.box || 10) / f / 2;
  for (let i = 0; i < run.s.length; i++) {{
    if (run.s[i] < t) continue;
    const u = (run.x[i] + 0.5) / f - 0.5, v = (run.y[i] + 0.5) / f - 0.5;
    ctx.strokeRect(Math.round(u - h) + 0.5, Math.round(v - h) + 0.5, Math.round(2 * h), Math.round(2 * h));
  }}
}}

function update() {{
  const [k, t] = position();
  document.getElementById("threshold-value").textContent = t.toFixed(3);
  let total = 0;
  for (const run of runs) {{
    const n = run.counts[Math.min(k, run.counts.length - 1)];
    total += n;
    run.cell.textContent = n;
    if (run.caption) run.caption.textContent = run.name + ": " + n + " picks";
    draw(run, t);
  }}
  document.getElementById("total-count").textContent = total;
  const line = document.getElementById("threshold-line");
  const x = (width * (t - low) / (1 - low)).toFixed(2);
  line.setAttribute("x1", x);
  line.setAttribute("x2", x);
  for (const bar of histogram.querySelectorAll("rect.bar")) bar.classList.toggle("kept", parseFloat(bar.dataset.low) >= t);
}}

for (const cell of document.querySelectorAll("td.count")) {{
  const run = runs.find(r => r.name === cell.dataset.name);
  if (run) run.cell = cell;
}}
for (const run of runs) {{
  if (!run.src) continue;
  const figure = document.createElement("figure");
  run.canvas = document.createElement("canvas");
  run.canvas.className = "micrograph";
  run.canvas.dataset.name = run.name;
  run.caption = document.createElement("figcaption");
  figure.append(run.canvas, run.caption);
  thumbs.append(figure);
  run.image = new Image();
  run.image.onload = () => {{
    run.canvas.width = run.image.naturalWidth;
    run.canvas.height = run.image.naturalHeight;
    draw(run, position()[1]);
  }};
  run.image.src = run.src;
}}
slider.addEventListener("input", update);
update();
</script>
</body>
</html>
"""
