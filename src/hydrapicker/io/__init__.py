"""Files in and out: micrographs (MRC, TIFF, PNG/JPEG) and particle coordinates.

Every writer is atomic (see :mod:`hydrapicker.io.files`).
"""

from hydrapicker.io.coordinates import guess_format, read_picks, write_picks
from hydrapicker.io.files import atomic_path, atomic_write_bytes, atomic_write_text
from hydrapicker.io.micrograph import Micrograph, is_micrograph_path, micrograph_stem, read_micrograph, write_mrc
from hydrapicker.io.picks import Picks

__all__ = [
    "Micrograph",
    "Picks",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "guess_format",
    "is_micrograph_path",
    "micrograph_stem",
    "read_micrograph",
    "read_picks",
    "write_mrc",
    "write_picks",
]
