"""Atomic writes: a file is either complete or absent, never half-written."""

from __future__ import annotations

import os

import pytest

from hydrapicker.errors import HydraPickerError
from hydrapicker.io import atomic_path, atomic_write_text
from hydrapicker.io.files import save_figure


def test_atomic_write_creates_file_and_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "sub" / "out.txt", "hello\n")
    assert (tmp_path / "sub" / "out.txt").read_text() == "hello\n"
    assert os.listdir(tmp_path / "sub") == ["out.txt"]


def test_failure_inside_block_leaves_previous_content_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_temporary_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png"
        tmp.write_bytes(b"x")


def test_refuses_to_overwrite_when_asked(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(HydraPickerError, match="already exists"):
        with atomic_path(target, overwrite=False):
            pass


def test_unwritable_destination_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    with pytest.raises(HydraPickerError, match="cannot write"):
        atomic_write_text(blocker / "out.txt", "x")


def test_save_figure_writes_a_complete_png_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "curve.png", dpi=50)
    assert path == tmp_path / "curve.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]
    assert not plt.fignum_exists(fig.number)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_honour_the_umask(tmp_path, umask):
    """Lab-mates, a group's RELION project and a web server read what we write: 0644 under umask 022, not 0600."""
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "picks.csv", "x,y\n")
        with atomic_path(tmp_path / "image.png") as tmp:
            tmp.write_bytes(b"png")
    finally:
        os.umask(previous)
    for name in ("picks.csv", "image.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
