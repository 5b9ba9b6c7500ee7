"""Shared test fixtures: paths to the bundled real micrographs and small generated files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Tests live in folders that mirror the package; their shared helpers (_synthetic.py ...) live here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

ASSETS = Path(__file__).resolve().parents[1] / "src" / "hydrapicker" / "assets"
REAL_BGAL = ASSETS / "real" / "empiar10017_bgal_bin4"
REAL_T20S = ASSETS / "real" / "empiar10025_t20s_1mic"


@pytest.fixture
def bgal_dir() -> Path:
    """Three real 1024² β-galactosidase micrographs (7.08 Å/px, 27-px particles) with labels."""
    return REAL_BGAL


@pytest.fixture
def t20s_dir() -> Path:
    """One real T20S proteasome micrograph (~7.9 Å/px) with partial labels."""
    return REAL_T20S
