"""Per-image profile: every bad input of issue #4 ends in its documented row; stats mean what they say."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.validation.profile import PROFILE_SCHEMA, ProfileSettings, profile_image, profile_records
from tests.support import badimages as bad

# name -> (bytes factory, expected decode_ok, text the error or conversion must contain)
CASES = {
    "zero-byte": (bad.zero_byte, False, "empty file (0 bytes)"),
    "text named .png": (bad.text_as_png, False, "not an image in any format"),
    "truncated JPEG": (bad.truncated_jpeg, False, "truncated"),
    "20000x20000 PNG": (bad.huge_png, False, "decompression-bomb guard: more than validate.max_pixels"),
    "CMYK JPEG": (bad.cmyk_jpeg, True, "CMYK -> RGB"),
    "16-bit gray PNG": (bad.png_16bit_gray, True, "I;16 16-bit -> L 8-bit; L -> RGB"),
    "16-bit RGB PNG": (bad.png_16bit_rgb, True, "16-bit -> 8-bit (by the decoder)"),
    "palette PNG": (bad.palette_png, True, "P -> RGB"),
    "RGBA PNG": (bad.rgba_png, True, "RGBA -> RGB (alpha dropped)"),
    "grayscale PNG": (bad.grayscale_png, True, "L -> RGB"),
    "EXIF-rotated JPEG": (bad.exif_rotated_jpeg, True, "exif-orientation 6 -> upright"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_documented_row(name):
    make, decodes, text = CASES[name]
    data = make()
    row = profile_image(data)
    assert row["decode_ok"] is decodes
    assert text in (row.get("conversion") or "" if decodes else row["error"])
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["file_bytes"] == len(data)
    if decodes:  # every decodable row is complete
        assert set(PROFILE_SCHEMA.names) - set(row) == {"id", "source_path", "label", "split", "error"}


def test_headers_are_recorded_as_stored():
    assert profile_image(bad.png_16bit_gray()).items() >= {"mode": "I;16", "bit_depth": 16, "channels": 1}.items()
    assert profile_image(bad.png_16bit_rgb())["bit_depth"] == 16  # PIL says RGB 8-bit; the file says 16
    assert profile_image(bad.cmyk_jpeg())["channels"] == 4
    rotated = profile_image(bad.exif_rotated_jpeg(width=48, height=32))
    assert (rotated["width"], rotated["height"], rotated["exif_orientation"]) == (32, 48, 6)  # upright size
    assert profile_image(bad.good_png(1))["conversion"] is None


def test_sixteen_bit_is_scaled_not_clipped():
    gray = np.full((16, 16), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    row = profile_image(bad.encode(Image.fromarray(gray)))
    assert row["brightness_mean"] == pytest.approx(128 / 255, abs=0.01)


def test_pixel_limit_comes_from_settings():
    data = bad.good_png(2, size=64)
    assert profile_image(data, ProfileSettings(max_pixels=64 * 64))["decode_ok"]
    row = profile_image(data, ProfileSettings(max_pixels=1000))
    assert not row["decode_ok"] and "1,000" in row["error"]
    assert Image.MAX_IMAGE_PIXELS != 1000  # the process-wide PIL limit is restored


def test_stats_describe_the_pixels():
    white = profile_image(bad.encode(Image.new("RGB", (32, 32), "white")))
    assert white["brightness_mean"] == 1.0 and white["saturated_frac"] == 1.0 and white["blur_var"] == 0.0
    sharp = bad.noise_image(3, 64)
    blurred = profile_image(bad.encode(sharp.filter(ImageFilter.GaussianBlur(3))))
    assert blurred["blur_var"] < profile_image(bad.encode(sharp))["blur_var"] / 10
    dark = profile_image(bad.encode(Image.new("L", (32, 32), 40)))
    assert dark["brightness_mean"] == pytest.approx(40 / 255) and dark["contrast"] == 0.0


def test_phash_survives_reencoding_and_resizing_but_separates_images():
    smooth = [bad.noise_image(seed, 16).resize((128, 128), Image.Resampling.BILINEAR) for seed in (4, 5)]
    png = profile_image(bad.encode(smooth[0]))
    copies = [profile_image(bad.encode(smooth[0], "JPEG", quality=75)),
              profile_image(bad.encode(smooth[0].resize((64, 64))))]
    other = profile_image(bad.encode(smooth[1]))
    distance = lambda a, b: bin(int(a["phash"], 16) ^ int(b["phash"], 16)).count("1")  # noqa: E731
    assert all(copy["sha256"] != png["sha256"] and distance(png, copy) <= 2 for copy in copies)
    assert distance(png, other) > 10


def _records(n: int):
    for i in range(n):
        data = bad.good_png(i, 16) if i % 7 else bad.zero_byte()
        yield {"id": f"i{i}", "source_path": f"x/{i}.png", "label": str(i % 3), "split": "train"}, data


def test_parallel_profile_matches_serial_and_keeps_order():
    settings = ProfileSettings(chunk_size=5)
    serial = profile_records(_records(23), 23, settings, workers=1)
    parallel = profile_records(_records(23), 23, settings, workers=2)
    assert parallel.schema == PROFILE_SCHEMA and parallel.equals(serial)
    assert serial.column("id").to_pylist() == [f"i{i}" for i in range(23)]
    assert serial.column("decode_ok").to_pylist().count(False) == 4


def test_manifest_problems_are_named():
    with pytest.raises(ValueError, match=r"'i0' lacks column\(s\) split"):
        profile_records([({"id": "i0", "source_path": "a", "label": "x"}, b"")], 1)
    data = bad.good_png(6)
    meta = {"id": "i1", "source_path": "a/1.png", "label": "x", "split": "val", "sha256": "0" * 64}
    row = profile_records([(meta, data)], 1).to_pylist()[0]
    assert not row["decode_ok"] and "do not match the manifest sha256" in row["error"]


def test_empty_stream_gives_empty_table():
    assert profile_records([], 0).num_rows == 0
