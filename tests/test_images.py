import numpy as np
import pytest
from PIL import Image

from features.images import ImageDecodeError, is_image_file, load_image
from tests.conftest import write_image


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "1"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    ext = ".jpg" if fmt == "JPEG" else ".png"
    path = write_image(tmp_path / f"img{ext}", (200, 100, 50), (30, 20), mode=mode, fmt=fmt)
    arr = load_image(path, 16)
    assert arr.shape == (16, 16, 3)
    assert arr.dtype == np.uint8


def test_sixteen_bit_grayscale_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    values = np.full((10, 10), 32768, dtype=np.uint16)  # half of the 16-bit range
    Image.fromarray(values).save(path)
    arr = load_image(path, 8)
    assert 120 <= arr.mean() <= 136  # about 128, not 255


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    assert load_image(path, 8).min() == 255


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([10, 20, 30] * 256)
    img.info["transparency"] = 0
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    assert load_image(path, 4).shape == (4, 4, 3)


def test_resize_to_square(tmp_path):
    path = write_image(tmp_path / "wide.jpg", (10, 200, 10), (300, 100))
    arr = load_image(path, 24)
    assert arr.shape == (24, 24, 3)
    assert arr[..., 1].mean() > 150


@pytest.mark.parametrize("kind,reason", [("empty", "empty file"), ("truncated", "truncated"),
                                         ("not_image", "not an image")])
def test_broken_files_raise_with_reason(broken_files, kind, reason):
    with pytest.raises(ImageDecodeError) as info:
        load_image(broken_files[kind], 16)
    assert reason in info.value.reason


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(tmp_path / "nope.jpg", 16)


def test_decompression_bomb_refused(tmp_path):
    path = write_image(tmp_path / "big.png", (1, 2, 3), (200, 200))
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(path, 16, max_pixels=10_000)
    assert load_image(path, 16, max_pixels=40_000).shape == (16, 16, 3)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, :10] = 255  # white band on the left of a wide image
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes(), quality=100)
    out = load_image(path, 30)
    assert out[:8].mean() > 200  # band now at the top
    assert out[-8:].mean() < 60


@pytest.mark.parametrize("name,expected", [("a.JPG", True), ("b.jpeg", True), ("c.Png", True),
                                           (".hidden.jpg", False), ("notes.txt", False),
                                           ("x.webp", True)])
def test_is_image_file(name, expected):
    assert is_image_file(name) is expected


def test_sixteen_bit_scan_converts_without_float64_copies(tmp_path):
    import tracemalloc

    side = 2000  # 4 megapixels: 8 MB as uint16, 32 MB per float64 copy
    ramp = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(ramp.reshape(side, side)).save(path)
    tracemalloc.start()
    try:
        out = load_image(path, 32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MB"


def test_sixteen_bit_values_are_rounded_not_clipped(tmp_path):
    values = np.array([[0, 128, 129, 257, 65535, 32896]], dtype=np.uint16)
    path = tmp_path / "v.png"
    Image.fromarray(values).save(path)
    out = load_image(path, None)
    assert out[0, :, 0].tolist() == [0, 0, 1, 1, 255, 128]


def test_decoding_leaves_the_process_warning_state_alone(tmp_path, monkeypatch):
    import warnings

    def forbidden(*args, **kwargs):
        raise AssertionError("warnings.catch_warnings is not thread-safe; decode runs in threads")

    monkeypatch.setattr(warnings, "catch_warnings", forbidden)
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        load_image(path, 8, max_pixels=1000)
    assert load_image(path, 8).shape == (8, 8, 3)


def _full_size_then_bilinear(calls):
    """A device decoder as nvJPEG behaves: full-size decode, resize; fails the whole batch
    on a broken file. Records the files it was given."""

    def decode(paths, size):
        calls.append([p.rsplit("/", 1)[-1] for p in paths])
        out = []
        for path in paths:
            with Image.open(path) as img:
                img.load()  # raises for a truncated file, as nvJPEG does
                out.append(np.asarray(img.convert("RGB").resize((size, size),
                                                                Image.Resampling.BILINEAR)))
        return out

    return decode


def test_large_plain_jpegs_go_to_the_device_decoder_and_the_rest_to_the_reader(
        tmp_path, monkeypatch, broken_files):
    from features import images

    monkeypatch.setattr(images, "DEVICE_DECODE_MIN_BYTES", 2_000)
    big = write_image(tmp_path / "big.jpg", (30, 120, 200), (400, 300), seed=1)
    small = write_image(tmp_path / "small.jpg", (30, 120, 200), (16, 16), seed=2)
    png = write_image(tmp_path / "big.png", (200, 30, 30), (400, 300), seed=3)
    assert big.stat().st_size >= 2_000 > small.stat().st_size and png.stat().st_size >= 2_000
    calls = []
    out = images.load_images([big, small, png], 32, device_decoder=_full_size_then_bilinear(calls))
    assert calls == [["big.jpg"]]
    for path, pixels in zip([big, small, png], out, strict=True):
        # the same pixels within a few levels: draft-mode decode against full-size decode
        diff = np.abs(pixels.astype(int) - load_image(path, 32).astype(int))
        assert pixels.shape == (32, 32, 3) and diff.mean() < 3, (path, diff.max())
    assert images.load_images([big], 32) and calls == [["big.jpg"]]  # no decoder: the CPU


def test_a_broken_file_in_a_device_batch_is_skipped_with_the_readers_reason(
        tmp_path, monkeypatch, broken_files):
    from features import images

    monkeypatch.setattr(images, "DEVICE_DECODE_MIN_BYTES", 2_000)
    big = write_image(tmp_path / "big.jpg", (30, 120, 200), (400, 300), seed=1)
    truncated = tmp_path / "truncated_big.jpg"
    truncated.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    assert truncated.stat().st_size >= 2_000 and images.goes_to_device(str(truncated))
    calls = []
    paths = [big, truncated, broken_files["empty"], broken_files["not_image"]]
    out = images.load_images(paths, 32, device_decoder=_full_size_then_bilinear(calls))
    assert calls == [["big.jpg", "truncated_big.jpg"]]
    assert isinstance(out[0], np.ndarray)
    reasons = [r.reason for r in out[1:]]
    expected = []
    for path in paths[1:]:
        with pytest.raises(ImageDecodeError) as err:
            load_image(path, 32)
        expected.append(err.value.reason)
    assert reasons == expected and reasons[0] == "truncated image"


def test_no_device_decoder_without_torch_with_cuda_or_under_another_backend():
    import importlib.util

    from features.batches import device_decoder
    from features.images import nvjpeg_decoder

    if importlib.util.find_spec("torch") is None:
        assert nvjpeg_decoder() is None
    assert device_decoder() is None  # this process computes with tensorflow


def test_cells_are_of_the_picture_as_decoded_whatever_the_output_size(tmp_path):
    # the pixel signature of a file (near-duplicate grouping) must not hang on the
    # network's input size, or two stores of one folder would record different splits
    # (a JPEG under twice the smaller size: libjpeg decodes it whole for both)
    path = write_image(tmp_path / "photo.jpg", (120, 80, 60), size=(60, 50), seed=3)
    (small, cells), (large, same) = (load_image(path, size, cells=16) for size in (32, 96))
    assert small.shape == (32, 32, 3) and large.shape == (96, 96, 3)
    assert cells.shape == (16, 16, 3) and cells.dtype == np.uint8
    np.testing.assert_array_equal(cells, same)
    assert isinstance(load_image(path, 32), np.ndarray)  # without cells: the pixels alone
