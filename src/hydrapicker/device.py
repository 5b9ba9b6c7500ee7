"""Where the network runs: refusing a device this machine does not have, before anything is written.

torch is imported inside :func:`check_device` on purpose: configs call it, and the CLI imports
configs to show their defaults in ``--help`` without paying for torch.
"""

from __future__ import annotations

from hydrapicker.errors import HydraPickerError

__all__ = ["check_device"]


def check_device(device: str) -> None:
    """Refuse a device this machine does not have (a user error naming it)."""
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise HydraPickerError(f"--device {device}: no CUDA device is available here (use --device cpu)")
