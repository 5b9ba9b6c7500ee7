#!/usr/bin/env bash
# Zero-shot on the bundled real micrographs: HydraPicker's shipped generic model, Topaz's pretrained
# resnet16 and the DoG blob picker, each scored by `hydrapicker evaluate --json` with the same boxes.
#
#   β-gal (EMPIAR-10017): three 1024² micrographs, 7.08 Å/px, 27-px particles and boxes.
#   T20S (EMPIAR-10025): one 640x619 micrograph, ~7.9 Å/px, 18-px boxes; its labels are partial
#     (visible particles left unlabelled), so every picker's precision, AP and AUROC there are
#     lower bounds. (`evaluate --ignore-unlabelled` only drops micrographs without any truth
#     file; it does not mask unlabelled regions, so it does not apply here.)
#
# Every picker keeps its full ranking: HydraPicker at --threshold 0.001, Topaz at its default -6
# log-likelihood ratio, DoG with no threshold.
#
# Usage: bash benchmarks/peers/run_real.sh [OUT]        (default OUT: runs/peers_real)
# Writes OUT/<dataset>/<picker>/picks.csv and OUT/<dataset>/<picker>.json (evaluate's scores),
# and prints one table. Creates the Topaz environment first if it is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${1:-runs/peers_real}"
py=.venv/bin/python
hp=.venv/bin/hydrapicker
peers=benchmarks/peers
assets=src/hydrapicker/assets/real
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

[ -x "$peers/.topaz-venv/bin/python" ] || bash "$peers/topaz_setup.sh"

run_dataset() {  # name, micrograph glob folder, pixel size, diameter/box px
    local name=$1 dir=$2 pixel=$3 box=$4
    local dest="$out/$name"
    mkdir -p "$dest"
    local mics=("$dir"/*.png)
    local truth=("$dir"/*.csv)

    local t0=$SECONDS
    "$hp" pick "${mics[@]}" --out "$dest/hydrapicker" --diameter-px "$box" --pixel-size "$pixel" \
        --threshold 0.001 --format csv --overwrite > "$dest/hydrapicker.log" 2>&1
    echo "$name hydrapicker: $((SECONDS - t0)) s"
    t0=$SECONDS
    "$py" "$peers/topaz_pick.py" "${mics[@]}" --out "$dest/topaz" --diameter-px "$box" --pixel-size "$pixel" > "$dest/topaz.log" 2>&1
    echo "$name topaz: $((SECONDS - t0)) s"
    t0=$SECONDS
    "$py" "$peers/dog_pick.py" "${mics[@]}" --out "$dest/dog" --diameter-px "$box" --pixel-size "$pixel" > "$dest/dog.log" 2>&1
    echo "$name dog: $((SECONDS - t0)) s"

    for picker in hydrapicker topaz dog; do
        "$hp" evaluate "$dest/$picker/picks.csv" --truth "${truth[@]}" --box "$box" \
            --json "$dest/$picker.json" > "$dest/$picker.eval.txt"
    done
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
run_dataset empiar10017_bgal "$assets/empiar10017_bgal_bin4" 7.08 27
run_dataset empiar10025_t20s "$assets/empiar10025_t20s_1mic" 7.9 18
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$py" - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'dataset':<18} {'picker':<12} {'AP':>6} {'AUROC':>6} {'best F1':>7} {'picks':>6} {'true':>5} {'TP':>5}")
for dataset in ("empiar10017_bgal", "empiar10025_t20s"):
    for picker in ("hydrapicker", "topaz", "dog"):
        pooled = json.loads((out / dataset / f"{picker}.json").read_text())
        print(f"{dataset:<18} {picker:<12} {pooled['ap']:6.3f} {pooled['auroc']:6.3f} {pooled['best_f1']:7.3f} "
              f"{pooled['n_picks']:6d} {pooled['n_true']:5d} {pooled['tp']:5d}")
EOF
