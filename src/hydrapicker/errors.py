"""The one exception type for user errors: bad files, bad fields, bad values.

The CLI prints it as a single line (``hydrapicker: error: <message>``) and exits non-zero.
Messages name the file, the dataset or the field, and the bad value.
"""

from __future__ import annotations

__all__ = ["HydraPickerError"]


class HydraPickerError(ValueError):
    """A problem with the user's input, explained in one line."""
