"""HydraPicker: a multi-head particle picker for single-particle cryo-EM.

A fully convolutional trunk shared by one SSD-like head per training dataset and a
generic head tied to them by an L2 weight penalty (see ``docs/`` and the README).
"""

__version__ = "0.1.0"

from hydrapicker.errors import HydraPickerError

__all__ = ["HydraPickerError", "__version__"]
