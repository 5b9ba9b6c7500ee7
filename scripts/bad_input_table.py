"""Run every bad-input case (tests/_bad_inputs.py) and write docs/reliability.md's table.

Each case runs `hydrapicker VERB ...` in-process on tiny generated inputs in a temporary folder;
the table gives the exit status, the one line printed, and whether any output was partial.

Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/bad_input_table.py [--out docs/reliability.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

BEGIN, END = "<!-- bad-input table: begin (scripts/bad_input_table.py) -->", "<!-- bad-input table: end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table() -> str:
    import torch
    from _bad_inputs import CASES, run_case

    torch.set_num_threads(1)
    rows = [
        "| verb | bad input | exit | what it printed (stderr; paths relative to the run folder) | outputs | also pinned by |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="hp-bad-") as tmp:
        for i, case in enumerate(CASES):
            start = time.perf_counter()
            outcome = run_case(case, Path(tmp) / f"case{i:03d}")
            message = outcome.message() or "(nothing)"
            if case.expect == "accepted":
                message = f"accepted: {case.why}" + (f" — printed: {message}" if outcome.code else "")
            outputs = "; ".join(outcome.partial) if outcome.partial else "complete or absent"
            pinned = f"tests/{case.pinned_by}" if case.pinned_by else ""
            rows.append(
                f"| {case.verb} | {_cell(case.item)} | {outcome.code} | `{_cell(message)}` | {_cell(outputs)} | {_cell(pinned)} |"
            )
            print(f"{time.perf_counter() - start:5.1f} s  {case.id}: {outcome.code} {message}", file=sys.stderr)
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args()
    text = args.out.read_text() if args.out.is_file() else f"{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    args.out.write_text(f"{head}{BEGIN}\n{table()}{END}{tail}")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
