"""Micrograph reading: every supported file type, the array orientation, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from hydrapicker.errors import HydraPickerError
from hydrapicker.io import micrograph_stem, read_micrograph, write_mrc


def _ramp(rows: int = 12, cols: int = 20) -> np.ndarray:
    # Distinct values along rows and columns, so any transpose or flip shows.
    return (np.arange(rows)[:, None] * 100 + np.arange(cols)[None, :]).astype(np.float32)


def test_mrc_round_trip_keeps_orientation_and_pixel_size(tmp_path):
    path = tmp_path / "mic.mrc"
    write_mrc(path, _ramp(), pixel_size=1.37)
    mic = read_micrograph(path)
    np.testing.assert_array_equal(mic.data, _ramp())
    assert mic.data.dtype == np.float32
    assert mic.pixel_size == pytest.approx(1.37, rel=1e-6)
    assert mic.shape == (12, 20) and mic.name == "mic"


def test_mrc_orientation_matches_mrcfile_row_col_order(tmp_path):
    """x = column and y = row of the array exactly as mrcfile returns it: no flip anywhere."""
    import mrcfile

    path = tmp_path / "ref.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(_ramp())
    with mrcfile.open(path) as mrc:
        expected = np.array(mrc.data)
    np.testing.assert_array_equal(read_micrograph(path).data, expected)


def test_one_slice_mrc_stack_reads_as_2d(tmp_path):
    import mrcfile

    path = tmp_path / "stack.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(_ramp()[None])
    assert read_micrograph(path).shape == (12, 20)


def test_multi_frame_stack_is_refused_with_a_hint(tmp_path):
    import mrcfile

    path = tmp_path / "movie.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.stack([_ramp(), _ramp()]))
    with pytest.raises(HydraPickerError, match=r"movie\.mrcs.*2-D.*motion-correct"):
        read_micrograph(path)


def test_mrc_without_pixel_size_gives_none(tmp_path):
    path = tmp_path / "nopix.mrc"
    write_mrc(path, _ramp())
    assert read_micrograph(path).pixel_size is None


def test_tiff_reads_as_float32_in_stored_order(tmp_path):
    path = tmp_path / "mic.tif"
    tifffile.imwrite(path, _ramp().astype(np.uint16))
    mic = read_micrograph(path)
    np.testing.assert_array_equal(mic.data, _ramp())
    assert mic.pixel_size is None


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_8bit_images_read_in_stored_order(tmp_path, suffix):
    data = (_ramp(16, 16) % 256).astype(np.uint8)
    path = tmp_path / f"mic{suffix}"
    Image.fromarray(data).save(path, quality=100)
    mic = read_micrograph(path)
    assert mic.shape == (16, 16)
    tolerance = 0 if suffix == ".png" else 8  # JPEG is lossy
    assert np.abs(mic.data - data).max() <= tolerance


def test_rgb_png_is_converted_to_grey(tmp_path):
    data = (_ramp(8, 8) % 256).astype(np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(np.stack([data] * 3, axis=-1)).save(path)
    np.testing.assert_array_equal(read_micrograph(path).data, data)


def test_real_bundled_png_reads(bgal_dir):
    mic = read_micrograph(next(bgal_dir.glob("*.png")))
    assert mic.shape == (1024, 1024)
    assert mic.data.std() > 0


def test_micrograph_stem_strips_micrograph_suffixes():
    assert micrograph_stem("a/b/mic_001.mrc") == "mic_001"
    assert micrograph_stem("x.tiff") == "x"
    assert micrograph_stem("run.1.png") == "run.1"


# --- bad input: one clear line naming the file --------------------------------------------


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(HydraPickerError, match="nothere.mrc: no such micrograph file"):
        read_micrograph(tmp_path / "nothere.mrc")


def test_non_mrc_content_is_refused(tmp_path):
    path = tmp_path / "text.mrc"
    path.write_text("this is not an MRC file at all " * 100)
    with pytest.raises(HydraPickerError, match=r"text\.mrc: not a readable MRC file"):
        read_micrograph(path)


def test_truncated_mrc_is_refused(tmp_path):
    path = tmp_path / "cut.mrc"
    write_mrc(path, _ramp(64, 64))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 500])
    with pytest.raises(HydraPickerError, match=r"cut\.mrc: not a readable MRC file"):
        read_micrograph(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(HydraPickerError, match=r"empty\.png: not a readable image"):
        read_micrograph(path)


def test_nan_pixels_are_refused(tmp_path):
    data = _ramp()
    data[3, 4] = np.nan
    data[5, 6] = np.inf
    path = tmp_path / "nan.mrc"
    write_mrc(path, data)
    with pytest.raises(HydraPickerError, match=r"nan\.mrc: 2 pixel\(s\) are NaN or Inf"):
        read_micrograph(path)


def test_constant_image_is_refused(tmp_path):
    path = tmp_path / "flat.mrc"
    write_mrc(path, np.full((10, 10), 3.0, np.float32))
    with pytest.raises(HydraPickerError, match=r"flat\.mrc: the image is constant"):
        read_micrograph(path)


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "mic.dat"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(HydraPickerError, match=r"mic\.dat: unknown micrograph type"):
        read_micrograph(path)


# --- issue 22: links named as given, complex pixels, stacks refused from their header ----------


def test_a_linked_micrograph_is_named_after_the_link_not_its_target(tmp_path):
    from hydrapicker.io.micrograph import expand_micrographs

    raw = tmp_path / "raw"
    write_mrc(raw / "FoilHole_1_Data.mrc", _ramp())
    imported = tmp_path / "J1" / "imported"
    imported.mkdir(parents=True)
    (imported / "012345_FoilHole_1_Data.mrc").symlink_to(raw / "FoilHole_1_Data.mrc")
    (imported / "012346_FoilHole_1_Data.mrc").symlink_to(raw / "FoilHole_1_Data.mrc")
    found = expand_micrographs([imported])
    assert [micrograph_stem(p) for p in found] == ["012345_FoilHole_1_Data", "012346_FoilHole_1_Data"]
    assert read_micrograph(found[0]).name == "012345_FoilHole_1_Data"


def test_a_dangling_link_in_a_folder_is_found_and_its_read_names_the_missing_target(tmp_path):
    from hydrapicker.io.micrograph import expand_micrographs

    write_mrc(tmp_path / "m0.mrc", _ramp())
    (tmp_path / "m1.mrc").symlink_to(tmp_path / "gone.mrc")
    found = expand_micrographs([tmp_path])
    assert [p.name for p in found] == ["m0.mrc", "m1.mrc"]
    with pytest.raises(HydraPickerError, match=r"m1\.mrc: a link to .*gone\.mrc, which does not exist"):
        read_micrograph(found[1])


@pytest.mark.parametrize("suffix", [".mrc", ".tif"])
def test_complex_pixels_are_refused(tmp_path, suffix):
    import mrcfile

    data = (_ramp() + 1j * _ramp()).astype(np.complex64)
    path = tmp_path / f"fft{suffix}"
    if suffix == ".mrc":
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)
    else:
        tifffile.imwrite(path, data)
    with pytest.raises(HydraPickerError, match=r"fft\.\w+: complex pixels"):
        read_micrograph(path)


def test_a_tiff_with_pages_of_different_sizes_is_refused_not_read_as_its_first_page(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(_ramp(12, 20))
        tiff.write(_ramp(30, 40))
    with pytest.raises(HydraPickerError, match=r"pages\.tif: expected a 2-D micrograph, got 2 frames.*2 page sizes"):
        read_micrograph(path)


def test_a_movie_is_refused_from_its_header_before_its_frames_are_read(tmp_path):
    import mrcfile

    path = tmp_path / "movie.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.stack([_ramp()] * 3))
    # Cut to its header: only the header can say it is a movie.
    path.write_bytes(path.read_bytes()[:1024])
    with pytest.raises(HydraPickerError, match=r"movie\.mrc: expected a 2-D micrograph, got 3 frames of 12 x 20 px"):
        read_micrograph(path)
