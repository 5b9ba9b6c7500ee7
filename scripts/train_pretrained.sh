#!/usr/bin/env bash
# Train the shipped pretrained generic model, reproducibly and resumably, in one command:
#
#   scripts/train_pretrained.sh            (or: make pretrained)
#
# 1. Simulates the training collection from SEED into data-generated/collection (every
#    structure in data/structures EXCEPT 5a1a, beta-galactosidase, so that the bundled
#    EMPIAR-10017 micrographs show an unseen protein as well as an unseen dataset). Skipped
#    when a complete collection made with the same settings is already there.
# 2. Writes data-generated/collection/pretrained.toml: the same datasets, each with its last
#    micrograph held out as the validation split (the model kept is the one with the lowest
#    validation loss on those held-out simulated micrographs; no real micrograph is used).
# 3. Runs `hydrapicker train --stage 1 --resume` into runs/pretrained: rerunning the script
#    continues from runs/pretrained/stage1/last.pt after the last finished epoch.
# 4. Copies the best checkpoint, stripped to trunk + generic head (+ size head), to
#    src/hydrapicker/assets/models/generic.pt (defaults.PRETRAINED_MODEL).
#
# Everything is logged to runs/pretrained/train.log. Settings can be overridden from the
# environment (e.g. EPOCHS=60 scripts/train_pretrained.sh); MODEL_CARD.md records the ones
# the shipped model was trained with.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
HP=${HP:-.venv/bin/hydrapicker}
SEED=${SEED:-0}
CONDITIONS=${CONDITIONS:-3}
MICROGRAPHS=${MICROGRAPHS:-3}
SIZE=${SIZE:-768}
EXCLUDE=${EXCLUDE:-5a1a}
PRESET=${PRESET:-tiny}
EPOCHS=${EPOCHS:-20}
T0_EPOCHS=${T0_EPOCHS:-20}
BATCHES=${BATCHES:-25}
VAL_BATCHES=${VAL_BATCHES:-10}
SCALE_JITTER=${SCALE_JITTER:-"0.5 2.0"}
SIZE_HEAD=${SIZE_HEAD:-1}  # 1: train a size head, so that `pick` corrects a diameter given wrong
THREADS=${THREADS:-2}
COLLECTION=${COLLECTION:-data-generated/collection}
RUN=${RUN:-runs/pretrained}
SHIPPED=${SHIPPED:-src/hydrapicker/assets/models/generic.pt}

mkdir -p "$RUN"
LOG="$RUN/train.log"
exec > >(tee -a "$LOG") 2>&1
echo "=== $(date -u +%FT%TZ) train_pretrained.sh (git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"

# --- 1. the simulated collection -------------------------------------------------------
structures=""
for path in data/structures/*.pdb.gz data/structures/*.cif.gz; do
    id=$(basename "$path"); id=${id%.gz}; id=${id%.*}
    [[ " $EXCLUDE " == *" $id "* ]] || structures+="$id "
done
structures=$(echo "$structures" | tr ' ' '\n' | sort | grep . | tr '\n' ' ' | sed 's/ *$//')
params="seed=$SEED conditions=$CONDITIONS micrographs=$MICROGRAPHS size=$SIZE structures=$structures"
stamp="$COLLECTION/.pretrained-params"
if [[ -f "$COLLECTION/collection.toml" && -f "$stamp" && "$(cat "$stamp")" == "$params" ]]; then
    echo "collection: $COLLECTION is complete ($params); not simulated again"
else
    echo "collection: simulating $params"
    rm -rf "$COLLECTION"  # a partial or differently made collection: start clean
    # shellcheck disable=SC2086
    "$PY" scripts/make_training_collection.py --out "$COLLECTION" --seed "$SEED" --conditions "$CONDITIONS" \
        --micrographs "$MICROGRAPHS" --size "$SIZE" --processes 2 --only $structures
    echo "$params" > "$stamp"
fi

# --- 2. project file with a held-out validation micrograph per dataset ------------------
"$PY" - "$COLLECTION" <<'EOF'
"""pretrained.toml: every collection dataset, its last micrograph as the validation split."""
import sys, tomllib
from pathlib import Path

from hydrapicker.io.files import atomic_write_text

root = Path(sys.argv[1])
includes = tomllib.loads((root / "collection.toml").read_text())["include"]
lines = ["# Written by scripts/train_pretrained.sh: the collection, one validation micrograph per dataset."]
for include in includes:
    entry = tomllib.loads((root / include).read_text())["dataset"][0]
    folder = Path(include).parent.as_posix()
    stems = sorted(p.name.split(".")[0] for p in (root / folder / "micrographs").iterdir())
    lines += [
        "[[dataset]]",
        f'name = "{entry["name"]}"',
        f'micrographs = "{folder}/{entry["micrographs"]}"',
        f'coordinates = "{folder}/{entry["coordinates"]}"',
        f'format = "{entry["format"]}"',
        f'pixel_size = {entry["pixel_size"]!r}',
        f'diameter = {entry["diameter"]!r}',
        f'val = ["{stems[-1]}"]',
        "",
    ]
atomic_write_text(root / "pretrained.toml", "\n".join(lines))
print(f"project: {root / 'pretrained.toml'} ({len(includes)} datasets)")
EOF

# --- 3. training (stage 1: one head on every dataset pooled = the generic head) ---------
size_head_flag=""
if [[ "$SIZE_HEAD" == 1 ]]; then size_head_flag="--size-head"; fi
# shellcheck disable=SC2086
"$HP" train "$COLLECTION/pretrained.toml" --out "$RUN" --preset "$PRESET" --stage 1 --epochs "$EPOCHS" \
    --t0-epochs "$T0_EPOCHS" --batches-per-epoch "$BATCHES" --val-batches "$VAL_BATCHES" \
    --scale-jitter $SCALE_JITTER --cache-dir "$COLLECTION/.prepared" --seed "$SEED" --threads "$THREADS" --resume $size_head_flag

# --- 4. the shipped file: trunk + generic head of the best checkpoint --------------------
"$PY" scripts/ship_generic.py "$RUN/model.pt" "$SHIPPED" --run-record "$RUN/config.json"
echo "=== $(date -u +%FT%TZ) done: $SHIPPED"
