#!/usr/bin/env bash
# Creates benchmarks/peers/.topaz-venv with Topaz (topaz-em from PyPI) on the CPU build of torch.
#
# Topaz is GPLv3: it lives in its own virtual environment and is only ever run as a program,
# never imported by hydrapicker.
#
# Why not a plain `pip install topaz-em`: topaz-em 0.3.20 requires `torch>=1.0.0` (2.13.0
# satisfies it) and `torchvision`. PyPI's torchvision wheels are built against a CUDA torch;
# beside the CPU torch 2.13.0 wheel they fail to import ("operator torchvision::nms does not
# exist"), and letting pip choose torchvision would pull a CUDA torch of several GB. Topaz
# imports torchvision only in its training data modules (topaz/utils/data/sampler.py,
# memory_mapped_data.py), never on the `preprocess`/`extract` path we run, so we install
# topaz-em without dependencies and then its other requirements by name.
#
# Usage: bash benchmarks/peers/topaz_setup.sh   (idempotent; PYTHON=python3.11 to choose)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.topaz-venv"
python="${PYTHON:-python3}"
TOPAZ_VERSION="${TOPAZ_VERSION:-0.3.20}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)
# torch first, pinned: `pip install torch==2.13.0` takes the CPU wheel that lies on these machines.
"${pip[@]}" "torch==$TORCH_VERSION"
"${pip[@]}" --no-deps "topaz-em==$TOPAZ_VERSION"
# topaz-em's requirements (its METADATA), torch and torchvision excepted; mrcfile and pillow
# let topaz_pick.py hand Topaz an MRC copy of PNG/TIFF micrographs.
"${pip[@]}" "tqdm>=4.65.0" "h5py>=3.7.0" "numpy>=1.11" "pandas>=0.20.3" "psutil>=5.8.0" \
    "scikit-learn>=0.19.0" "scipy>=0.17.0" "pillow>=6.2.0" future "torch==$TORCH_VERSION"

# pip then reports "topaz-em 0.3.20 requires torchvision, which is not installed": expected, see above.
# `topaz --version` would import the training commands too (torchvision), so check the two we use.
"$venv/bin/python" -c "import topaz, torch, topaz.commands.preprocess, topaz.commands.extract
print('topaz', topaz.__version__, 'torch', torch.__version__)"
