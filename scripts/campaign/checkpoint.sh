#!/usr/bin/env bash
# Generic model v2 (issue 18): when a training cycle ends, keep the campaign's checkpoint and score it.
#
#   scripts/campaign/checkpoint.sh NAME        # e.g. cycle2
#
# 1. Copies runs/campaign/stage1/{last.pt,log.csv,log.json} and runs/campaign/config.json into
#    benchmarks/campaign/ (committed: the next session, maybe on another machine, resumes from it).
# 2. Exports the generic model of last.pt (scripts/ship_generic.py) to runs/campaign/NAME-generic.pt
#    and runs the validation suite on it into benchmarks/campaign/validation-NAME.{md,json}.
# Shipping is by hand: compare with the shipped model's validation (benchmarks/campaign/), and if
# it is better, copy runs/campaign/NAME-generic.pt to src/hydrapicker/assets/models/generic.pt and
# update MODEL_CARD.md and the README.
set -euo pipefail
cd "$(dirname "$0")/../.."

NAME=${1:?usage: scripts/campaign/checkpoint.sh NAME}
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/campaign}
COMMITTED=${COMMITTED:-benchmarks/campaign}

# All four or none: check they are there, then copy each beside its target and rename it into place.
SOURCES=("$RUN/stage1/last.pt" "$RUN/stage1/log.csv" "$RUN/stage1/log.json" "$RUN/config.json")
for f in "${SOURCES[@]}"; do [[ -f "$f" ]] || { echo "missing $f: nothing copied" >&2; exit 1; }; done
for f in "${SOURCES[@]}"; do cp "$f" "$COMMITTED/.$(basename "$f").tmp"; done
for f in "${SOURCES[@]}"; do mv "$COMMITTED/.$(basename "$f").tmp" "$COMMITTED/$(basename "$f")"; done
"$PY" scripts/ship_generic.py "$COMMITTED/last.pt" "$RUN/$NAME-generic.pt" --run-record "$RUN/config.json"
"$PY" benchmarks/validate.py "$RUN/$NAME-generic.pt" --out "$RUN/validate-$NAME"
cp "$RUN/validate-$NAME/validation.md" "$COMMITTED/validation-$NAME.md"
cp "$RUN/validate-$NAME/validation.json" "$COMMITTED/validation-$NAME.json"
echo "validation of $NAME: $COMMITTED/validation-$NAME.md"
