"""STAR files: the one place they are written (RELION coordinates, RELION job files, simulated truth)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import pandas as pd
import starfile

from hydrapicker.io.files import atomic_path

__all__ = ["needs_quotes", "write_star"]


def write_star(path: str | os.PathLike, blocks: Mapping[str, object], float_format: str = "%.10g") -> None:
    """Write STAR ``blocks`` (``{block name: DataFrame or dict}``; ``""`` is a bare ``data_``) atomically with starfile.

    Strings are quoted, all of them, only when one needs it (:func:`needs_quotes`): RELION's
    own files quote nothing, and a reader that does not unquote then sees what it expects.
    """
    texts = (
        v
        for data in blocks.values()
        if isinstance(data, pd.DataFrame)
        for column in data.columns
        if not pd.api.types.is_numeric_dtype(data[column])
        for v in data[column]
    )
    quote = any(isinstance(v, str) and needs_quotes(v) for v in texts)
    with atomic_path(path) as tmp:
        starfile.write(dict(blocks), tmp, float_format=float_format, quote_all_strings=quote)


def needs_quotes(value: str) -> bool:
    """STAR values that start like a label, comment or keyword, or hold whitespace, must be quoted."""
    reserved = ("data_", "loop_", "save_", "stop_", "global_")
    return not value or value[0] in "_#$'\"[];" or value.startswith(reserved) or any(c.isspace() for c in value)
