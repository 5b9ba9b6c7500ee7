#!/usr/bin/env bash
# Zero-shot scores of a model's generic head on the bundled real micrographs (MODEL_CARD.md):
#   EMPIAR-10017 beta-gal, 3 micrographs, 7.08 A/px, labels 27 px boxes, diameter 191 A;
#   EMPIAR-10025 T20S, 1 micrograph, ~7.9 A/px, 18 px boxes, diameter 142 A, PARTIAL labels
#   (283 of the particles: unlabelled true particles count as false positives, so AP is a lower bound).
#
# Usage: scripts/zero_shot_real.sh [MODEL] [OUT]   (defaults: the shipped model, /tmp/zero-shot)
#   FACTOR=1.25 ...: give `pick` the diameter x FACTOR (a user's wrong guess; scored against the labels' box)
#   PICK_ARGS=--fixed-diameter ...: extra `pick` options (here: use the diameter as given, no size correction)
# Writes OUT/<set>/{star,...}, OUT/<set>/scores.json and OUT/<set>/plots; prints AP and AUROC.
set -euo pipefail
cd "$(dirname "$0")/.."
HP=${HP:-.venv/bin/hydrapicker}
MODEL=${1:-src/hydrapicker/assets/models/generic.pt}
OUT=${2:-/tmp/zero-shot}
FACTOR=${FACTOR:-1}
PICK_ARGS=${PICK_ARGS:-}
REAL=src/hydrapicker/assets/real

run() {  # name, micrograph folder, diameter A, pixel size, box px, [overlay]
    local name=$1 dir=$2 diameter=$3 pixel=$4 box=$5
    rm -rf "${OUT:?}/$name"
    mkdir -p "$OUT"
    given=$(awk -v d="$diameter" -v f="$FACTOR" 'BEGIN { printf "%.4g", d * f }')
    # shellcheck disable=SC2086
    "$HP" pick "$dir"/*.png --model "$MODEL" --diameter-A "$given" --pixel-size "$pixel" --threshold 0.001 \
        --format star --out "$OUT/$name" --overlay "$OUT/$name/overlays" $PICK_ARGS 2> "$OUT/$name.pick.log" > /dev/null \
        || { cat "$OUT/$name.pick.log" >&2; exit 1; }
    "$HP" evaluate "$OUT/$name"/star/*.star --truth "$dir"/*.csv --box "$box" \
        --json "$OUT/$name/scores.json" --plots "$OUT/$name/plots" > /dev/null
    "${PY:-.venv/bin/python}" -c "import json,sys; s=json.load(open(sys.argv[1])); \
print(f'{sys.argv[2]:5s} AP {s[\"ap\"]:.3f}  AUROC {s[\"auroc\"]:.3f}  best F1 {s[\"best_f1\"]:.3f}  ({sys.argv[3]}, {sys.argv[4]} A)')" "$OUT/$name/scores.json" "$name" "$MODEL" "$given"
    grep -h "particle diameter" "$OUT/$name.pick.log" || true
}

run bgal "$REAL/empiar10017_bgal_bin4" 191 7.08 27
run t20s "$REAL/empiar10025_t20s_1mic" 142 7.9 18
