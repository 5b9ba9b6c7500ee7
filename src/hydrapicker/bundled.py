"""What the package ships besides code: the pretrained generic model and a few real labelled micrographs.

The files live in the package's ``assets/`` folder (data, not code; see each folder's README for
provenance and licence); this module is where code finds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hydrapicker.defaults import PRETRAINED_MODEL
from hydrapicker.io.coordinates import read_picks
from hydrapicker.io.picks import Picks

__all__ = ["BundledDataset", "bundled_datasets", "pretrained_model_path"]


def pretrained_model_path() -> Path:
    """Where the shipped pretrained generic model lives (:data:`hydrapicker.defaults.PRETRAINED_MODEL`)."""
    return Path(str(resources.files("hydrapicker") / PRETRAINED_MODEL))


@dataclass(frozen=True)
class BundledDataset:
    """A real labelled dataset shipped inside the package (see its README for provenance)."""

    name: str
    folder: Path
    pixel_size: float  # Å/px of the stored images
    box_size: float  # particle box edge in stored pixels
    partial_labels: bool = False  # some particles unlabelled: AP, AUROC and precision are lower bounds

    def micrographs(self) -> list[Path]:
        return sorted(self.folder.glob("*.png"))

    def labels(self) -> dict[str, Picks]:
        truth: dict[str, Picks] = {}
        for mic in self.micrographs():
            truth.update(read_picks(mic.with_suffix(".csv"), micrograph=mic.stem, box_size=self.box_size))
        return truth


def bundled_datasets() -> list[BundledDataset]:
    """The real micrographs the package ships, with the pixel sizes and box sizes their READMEs give."""
    root = Path(str(resources.files("hydrapicker") / "assets" / "real"))
    return [
        BundledDataset("empiar10017_bgal_bin4", root / "empiar10017_bgal_bin4", pixel_size=7.08, box_size=27.0),
        BundledDataset(
            "empiar10025_t20s_1mic", root / "empiar10025_t20s_1mic", pixel_size=7.9, box_size=18.0, partial_labels=True
        ),
    ]
