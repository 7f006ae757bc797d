"""Image loading/saving: every input mode, every failure as ImageError."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaldn.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    image_to_tensor,
    load_image,
    load_image_with_notes,
    max_pixels_limit,
    save_png,
    tensor_to_image,
)


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds no pixel data (a decompression-bomb stand-in)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _decode_png_idat(path: Path) -> tuple[tuple[int, int, int, int], bytes]:
    data = path.read_bytes()
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBB", body[:10])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    assert ihdr is not None
    return ihdr, zlib.decompress(idat)


# ---------------------------------------------------------------- modes


def test_rgb_png(tmp_path: Path) -> None:
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(load_image(str(tmp_path / "a.png")), arr)  # str path
    np.testing.assert_array_equal(load_image((tmp_path / "a.png").read_bytes()), arr)  # bytes
    np.testing.assert_array_equal(load_image(Image.fromarray(arr)), arr)  # PIL image
    np.testing.assert_array_equal(load_image(arr), arr)  # numpy


def test_grayscale_l(tmp_path: Path) -> None:
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_la_to_rgba(tmp_path: Path) -> None:
    gray = _rgb()[:, :, 0]
    alpha = np.tile(np.arange(16, dtype=np.uint8) * 16, (12, 1))
    Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.shape == (12, 16, 4)
    np.testing.assert_array_equal(out[:, :, 1], gray)
    np.testing.assert_array_equal(out[:, :, 3], alpha)


def test_rgba_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.shape == (9, 7, 4)
    np.testing.assert_array_equal(out, arr)


def _palette_image() -> Image.Image:
    im = Image.new("P", (6, 4))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2, 0, 1, 2] * 4)
    return im


def test_palette_without_transparency(tmp_path: Path) -> None:
    _palette_image().save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = load_image(tmp_path / "p.png")
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 255, 0])
    np.testing.assert_array_equal(out[0, 2], [0, 0, 255])


def test_palette_with_transparency(tmp_path: Path) -> None:
    _palette_image().save(tmp_path / "pt.png", transparency=1)
    out = load_image(tmp_path / "pt.png")
    assert out.shape == (4, 6, 4)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0, 255])
    assert out[0, 1, 3] == 0  # index 1 is transparent
    _palette_image().save(tmp_path / "pt.gif", transparency=2)
    gif = load_image(tmp_path / "pt.gif")
    assert gif.shape == (4, 6, 4) and gif[0, 2, 3] == 0 and gif[0, 0, 3] == 255


def test_one_bit(tmp_path: Path) -> None:
    bits = np.zeros((8, 10), bool)
    bits[:, 5:] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    out = load_image(tmp_path / "b.png")
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    assert (out[:, :5] == 0).all() and (out[:, 5:] == 255).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    im = Image.new("CMYK", (16, 8), (0, 0, 0, 0))  # no ink: white
    im.paste((0, 255, 255, 0), (0, 0, 8, 8))  # magenta + yellow: red
    im.save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (8, 16, 3) and out.dtype == np.uint8
    assert (out[:, 12:] > 240).all()  # white
    red = out[2:6, 1:5].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 50 and red[2] < 50


def test_16bit_grayscale_png(tmp_path: Path) -> None:
    arr = (np.arange(12 * 16, dtype=np.uint32).reshape(12, 16) * 341).astype(np.uint16)
    Image.fromarray(arr.astype("<u2")).save(tmp_path / "g16.png")  # mode I;16
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    assert out.dtype == np.uint16 and out.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], arr)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high: left half red, right half blue. Orientation 6 means
    # "rotate 90 degrees clockwise to display": upright it is 20 wide x 40 high,
    # red on top, blue at the bottom.
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (40, 20, 3)
    top, bottom = out[2:16].reshape(-1, 3).mean(0), out[24:38].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_numpy_inputs() -> None:
    gray = np.array([[0, 128], [255, 7]], np.uint8)
    np.testing.assert_array_equal(load_image(gray)[:, :, 2], gray)
    assert load_image(gray[:, :, None]).shape == (2, 2, 3)
    f = load_image(np.full((2, 3, 3), 0.5, np.float32))
    assert f.dtype == np.uint8 and (f == 128).all()
    assert load_image(np.ones((2, 2), bool)).max() == 255
    assert load_image(np.full((2, 2, 3), 1000, np.uint16)).dtype == np.uint16
    assert load_image(np.full((2, 2, 3), 1000, np.int32)).dtype == np.uint16
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((2, 2, 3), np.nan))


# ---------------------------------------------------------------- errors


def test_text_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not an image"):
        load_image(p)
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"hello world")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(p)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError):
        load_image(12345)  # type: ignore[arg-type]


def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError):
        load_image(data[:40])  # cut inside the header chunks


def test_zero_size() -> None:
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((5, 0), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        load_image(Image.new("RGB", (0, 4)))


def test_too_many_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "big.png", max_pixels=5000)
    msg = str(err.value)
    assert "120x100" in msg and "12,000" in msg and "5,000" in msg
    assert load_image(tmp_path / "big.png", max_pixels=12000).shape == (100, 120, 3)
    with pytest.raises(ImageError, match="too large"):
        load_image(np.zeros((100, 120, 3), np.uint8), max_pixels=5000)
    # the environment variable sets the default limit
    assert max_pixels_limit() == DEFAULT_MAX_PIXELS == 4096 * 4096
    monkeypatch.setenv("KALDN_MAX_PIXELS", "5000")
    assert max_pixels_limit() == 5000
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "big.png")


def test_size_checked_before_decoding(tmp_path: Path) -> None:
    # 100000 x 100000 header with no data: refused from the header, no 30 GB allocation.
    bomb = _png_header_only(100_000, 100_000)
    with pytest.raises(ImageError, match="too large"):
        load_image(bomb)
    # above our limit too: PIL's own DecompressionBombError also becomes an ImageError
    with pytest.raises(ImageError, match="too large"):
        load_image(bomb, max_pixels=10**11)
    # within every limit but without pixel data: a decode error, still an ImageError
    with pytest.raises(ImageError):
        load_image(_png_header_only(50, 40))


# ---------------------------------------------------------------- saving and tensors


@pytest.mark.parametrize(
    "arr",
    [
        _rgb(),
        np.random.default_rng(1).integers(0, 256, (5, 6, 4), dtype=np.uint8),
        np.random.default_rng(2).integers(0, 256, (5, 6), dtype=np.uint8),
        np.random.default_rng(3).integers(0, 65536, (5, 6), dtype=np.uint16),
    ],
    ids=["rgb8", "rgba8", "gray8", "gray16"],
)
def test_save_png_round_trip(tmp_path: Path, arr: np.ndarray) -> None:
    save_png(arr, tmp_path / "x.png")
    back = np.asarray(Image.open(tmp_path / "x.png"))
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("channels", [3, 4])
def test_save_png_16bit_color(tmp_path: Path, channels: int) -> None:
    arr = np.random.default_rng(4).integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    save_png(arr, tmp_path / "c16.png")
    (w, h, depth, color_type), raw = _decode_png_idat(tmp_path / "c16.png")
    assert (w, h, depth, color_type) == (7, 5, 16, 2 if channels == 3 else 6)
    rows = np.frombuffer(raw, np.uint8).reshape(5, 1 + 7 * channels * 2)
    assert (rows[:, 0] == 0).all()
    np.testing.assert_array_equal(rows[:, 1:].copy().view(">u2").reshape(5, 7, channels), arr)
    # an independent decoder (Pillow, which reduces to 8 bits) agrees on the high bytes
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c16.png")), (arr >> 8).astype(np.uint8))


def test_save_png_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_png(np.zeros((4, 4, 3), np.float32), tmp_path / "f.png")
    with pytest.raises(ValueError):
        save_png(np.zeros((4, 4, 2), np.uint8), tmp_path / "f.png")


def test_tensor_round_trip() -> None:
    arr = _rgb()
    t = image_to_tensor(arr)
    assert t.shape == (1, 3, 12, 16) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    np.testing.assert_array_equal(tensor_to_image(t), arr)
    np.testing.assert_array_equal(tensor_to_image(t[0]), arr)
    a16 = np.random.default_rng(9).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    np.testing.assert_array_equal(tensor_to_image(image_to_tensor(a16), dtype=np.uint16), a16)
    f = np.random.default_rng(10).random((4, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(image_to_tensor(f)[0].permute(1, 2, 0).numpy(), f)
    with pytest.raises(ValueError):
        image_to_tensor(np.zeros((4, 4, 4), np.uint8))


def test_tensor_to_image_clamps_and_rounds() -> None:
    t = torch.tensor([-0.5, 0.0, 0.499 / 255, 0.501 / 255, 1.0, 1.7, float("nan")]).view(1, 1, 1, 7).repeat(1, 3, 1, 1)
    out = tensor_to_image(t)
    assert out.dtype == np.uint8 and out.shape == (1, 7, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 0, 1, 255, 255, 0])


def test_pil_32bit_int_and_file_object(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 70000, -5, 1234]], np.int32))  # mode "I"
    assert im.mode == "I"
    out = load_image(im)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[0, :, 0], [0, 65535, 0, 1234])
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "f.png")
    with open(tmp_path / "f.png", "rb") as fh:
        np.testing.assert_array_equal(load_image(fh), arr)


# ---------------------------------------------------------------- messages name the file only, notes say what changed


def _error(source: object, **kwargs: object) -> str:
    with pytest.raises(ImageError) as err:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    return str(err.value)


def test_messages_name_the_file_never_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "gradio" / "4f1c0ffee"
    folder.mkdir(parents=True)
    (folder / "notes.png").write_text("not an image at all")
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(_rgb(64, 64)).save(folder / "full.png")
    (folder / "cut.png").write_bytes((folder / "full.png").read_bytes()[:300])
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(folder / "big.png")
    cases = {
        "notes.png": ({}, "not an image"),
        "empty.png": ({}, "empty"),
        "cut.png": ({}, "truncated"),
        "big.png": ({"max_pixels": 5000}, "120x100 is over the 0.005-megapixel limit"),
        "missing.png": ({}, "not found"),
    }
    for file_name, (kwargs, expected) in cases.items():
        msg = _error(folder / file_name, **kwargs)
        assert expected in msg and f"'{file_name}'" in msg, msg
        assert str(tmp_path) not in msg and "gradio" not in msg and "4f1c0ffee" not in msg, msg
        # the caller's display name (an upload's original name) replaces the stored one
        msg = _error(folder / file_name, name="My holiday.png", **kwargs)
        assert "'My holiday.png'" in msg and file_name not in msg and str(tmp_path) not in msg, msg
    assert "folder" in _error(folder) and str(tmp_path) not in _error(folder)
    # bytes and open files: a name when there is one, never a path
    assert _error(b"hello").startswith("The upload is not an image")
    assert "'notes.png'" in _error(b"hello", name=str(folder / "notes.png"))
    with open(folder / "notes.png", "rb") as fh:
        msg = _error(fh)
    assert "'notes.png'" in msg and str(tmp_path) not in msg


def test_display_names_are_cleaned() -> None:
    assert _error(b"x", name=r"C:\Users\me\Desktop\cat.png").startswith("'cat.png' is not an image")
    assert _error(b"x", name="/tmp/a/b\nc\x00d.png").startswith("'bcd.png'")
    long = _error(b"x", name="y" * 500 + ".png")
    assert "..." in long and len(long) < 200


def test_no_pil_internals_in_messages(tmp_path: Path) -> None:
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    msg = _error(data[: len(data) // 2], name="up.png")
    assert msg == "'up.png' is damaged or truncated and cannot be decoded."
    # far over PIL's own limit: PIL refuses in Image.open; still our wording, no "DOS attack"
    msg = _error(_png_header_only(30_000, 30_000), name="bomb.png")
    assert msg.startswith("'bomb.png' is too large: 900,000,000 pixels is over the 16.8-megapixel limit"), msg
    assert "DOS" not in msg and "decompression" not in msg.lower()
    # over our limit only: refused from the header, with its size
    msg = _error(_png_header_only(5000, 4000), name="tall.png")
    assert "5000x4000 is over the 16.8-megapixel limit" in msg and "20,000,000" in msg


def test_plain_images_have_no_notes(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    arr, notes = load_image_with_notes(tmp_path / "a.png")
    assert notes == [] and arr.shape == (12, 16, 3)
    Image.fromarray(_rgb()[:, :, 0]).save(tmp_path / "g.png")
    assert load_image_with_notes(tmp_path / "g.png")[1] == []
    assert load_image_with_notes(_rgb())[1] == []
    assert isinstance(load_image(tmp_path / "a.png"), np.ndarray)  # unchanged return type


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_is_read_at_8_bits_with_a_note(tmp_path: Path, channels: int) -> None:
    arr = np.random.default_rng(11).integers(0, 65536, (6, 5, channels), dtype=np.uint16)
    save_png(arr, tmp_path / "deep.png")
    out, notes = load_image_with_notes(tmp_path / "deep.png")
    # what the note says is what happens: 8 bits, the top byte of each sample
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, (arr >> 8).astype(np.uint8))
    assert len(notes) == 1 and "'deep.png' has 16 bits per channel" in notes[0] and "read at 8 bits" in notes[0]


def test_16bit_grayscale_keeps_16_bits_with_a_note(tmp_path: Path) -> None:
    arr = np.random.default_rng(12).integers(0, 65536, (6, 5), dtype=np.uint16)
    save_png(arr, tmp_path / "g16.png")
    out, notes = load_image_with_notes(tmp_path / "g16.png", name="scan.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[:, :, 1], arr)
    assert notes == ["'scan.png' is 16-bit grayscale: all 16 bits are kept (as R = G = B)."]
    # 32-bit integer and float grayscale: clipped to 16 bits, and said so
    assert "clipped to 0..65535" in load_image_with_notes(Image.fromarray(np.array([[0, 70000]], np.int32)))[1][0]
    assert "rounded and clipped" in load_image_with_notes(Image.fromarray(np.array([[0.4, 7e4]], np.float32)))[1][0]


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]


@pytest.mark.parametrize(("suffix", "kind"), [("gif", "an animated GIF with 3 frames"),
                                              ("png", "an animated APNG with 3 frames"),
                                              ("webp", "an animated WEBP with 3 frames"),
                                              ("tif", "a multi-page TIFF with 3 pages")])
def test_animations_and_multi_page_files_use_the_first_frame(tmp_path: Path, suffix: str, kind: str) -> None:
    first, *rest = _frames()
    path = tmp_path / f"anim.{suffix}"
    try:
        first.save(path, save_all=True, append_images=rest, duration=100)
    except (KeyError, OSError):  # a Pillow built without this writer
        pytest.skip(f"Pillow cannot write animated {suffix}")
    out, notes = load_image_with_notes(path)
    assert out.shape[:2] == (6, 8)
    red = out[..., :3].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 40 and red[2] < 40  # the first frame
    assert notes == [f"'anim.{suffix}' is {kind}: only the first {'page' if suffix == 'tif' else 'frame'} is used."]
    # one frame: no note
    first.save(tmp_path / f"still.{suffix}")
    assert load_image_with_notes(tmp_path / f"still.{suffix}")[1] == []


def test_a_tiff_of_many_pages_is_counted_only_so_far(tmp_path: Path) -> None:
    # Pillow's page count walks every page in quadratic time: a small file of many tiny pages would hold the
    # checks worker for minutes, so the note counts the first MAX_COUNTED_PAGES only.
    from kaldn.images import MAX_COUNTED_PAGES
    pages = [Image.new("RGB", (2, 2), (i % 256, 0, 0)) for i in range(MAX_COUNTED_PAGES + 20)]
    pages[0].save(tmp_path / "many.tif", save_all=True, append_images=pages[1:])
    out, notes = load_image_with_notes(tmp_path / "many.tif")
    assert out.shape[:2] == (2, 2) and out[..., 0].max() == 0  # the first page
    assert notes == [f"'many.tif' is a multi-page TIFF with over {MAX_COUNTED_PAGES - 1} pages: only the first "
                     "page is used."]
    pages[0].save(tmp_path / "few.tif", save_all=True, append_images=pages[1:MAX_COUNTED_PAGES - 1])
    assert f"with {MAX_COUNTED_PAGES - 1} pages" in load_image_with_notes(tmp_path / "few.tif")[1][0]


def test_a_gif_of_many_frames_is_counted_only_so_far(tmp_path: Path) -> None:
    # Pillow's frame count walks every frame: a small file of many tiny frames held the checks worker for
    # seconds per megabyte. The scan that guards comments counts the first MAX_COUNTED_PAGES instead.
    from kaldn.images import MAX_COUNTED_PAGES, gif_scan
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, format="GIF")
    head = buf.getvalue()[:buf.getvalue().index(b",")]  # header, colour table: the frames follow
    frame = b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"  # 1x1 at (0, 0), one sub-block
    many = head + frame * (MAX_COUNTED_PAGES + 50) + b";"
    (tmp_path / "many.gif").write_bytes(many)
    out, notes = load_image_with_notes(tmp_path / "many.gif")
    assert out.shape[:2] == (4, 4)
    assert notes == [f"'many.gif' is an animated GIF with over {MAX_COUNTED_PAGES - 1} frames: only the first "
                     "frame is used."]
    few = head + frame * 7 + b";"
    assert gif_scan(few).frames == Image.open(io.BytesIO(few)).n_frames == 7 and gif_scan(few).complete


def test_a_damaged_later_page_cannot_get_a_large_page_decoded(tmp_path: Path) -> None:
    """Only the first page's size is checked, so the first page is what decodes: a TIFF whose small first page
    is followed by a large page with a broken link to the next must not leave the large one selected."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF", save_all=True,
                                  append_images=[Image.new("L", (600, 600))], compression="tiff_deflate")
    data = bytearray(buf.getvalue())
    with Image.open(io.BytesIO(bytes(data))) as im:
        im.seek(1)
        where = im._frame_pos[1]  # page 1's directory: its entry count, the entries, then the next one's offset
    entries = struct.unpack_from("<H", data, where)[0]
    struct.pack_into("<I", data, where + 2 + 12 * entries, len(data) + 1000)  # past the end of the file
    (tmp_path / "broken.tif").write_bytes(bytes(data))
    out, notes = load_image_with_notes(tmp_path / "broken.tif", max_pixels=64 * 64)
    assert out.shape[:2] == (8, 8)


def test_cmyk_and_exif_rotation_are_noted(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    out, notes = load_image_with_notes(tmp_path / "c.jpg")
    assert out.shape == (8, 16, 3) and out[..., 0].mean() > 200
    assert len(notes) == 1 and "'c.jpg' is CMYK: converted to RGB" in notes[0]
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out, notes = load_image_with_notes(tmp_path / "o.jpg")
    assert out.shape == (40, 20, 3) and notes == ["'o.jpg' was turned upright as its EXIF orientation tag says."]
    out, notes = load_image_with_notes(Image.new("YCbCr", (4, 4), (128, 128, 128)))
    assert out.shape == (4, 4, 3) and notes == ["The image is in the YCbCr colour space: converted to RGB."]


@pytest.mark.parametrize("fmt", ["SGI", "TGA", "PCX", "EPS"])
def test_formats_outside_the_photo_formats_are_refused_unopened(tmp_path: Path, fmt: str) -> None:
    """Pillow can read these (EPS through Ghostscript); the loader opens only PNG, JPEG, WebP, BMP, TIFF, GIF
    and PPM, whatever the suffix says."""
    path = tmp_path / "disguised.png"
    Image.fromarray(_rgb()).save(path, format=fmt)  # Pillow writes EPS without Ghostscript
    with Image.open(path) as im:
        assert im.format == fmt  # Pillow alone would open it (EPS: its header; decoding runs Ghostscript)
    with pytest.raises(ImageError, match="not an image in a format that can be read"):
        load_image(path)


def test_a_rotated_image_over_the_limit_is_named_upright_from_a_file_or_an_open_image(tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60x20, shown 20x60
    Image.new("RGB", (60, 20)).save(tmp_path / "side.jpg", exif=exif)
    with pytest.raises(ImageError, match="20x60 is over"):
        load_image_with_notes(tmp_path / "side.jpg", max_pixels=1000)
    with Image.open(tmp_path / "side.jpg") as im, pytest.raises(ImageError, match="20x60 is over"):
        load_image_with_notes(im, max_pixels=1000)


def test_a_gif_with_a_huge_comment_is_refused_before_pillow_parses_it(tmp_path):
    """Pillow joins a comment's 255-byte pieces in quadratic time: a big one is refused after a linear scan."""
    im = _palette_image()
    im.save(tmp_path / "small.gif", comment=b"c" * 1000)
    im.save(tmp_path / "big.gif", comment=b"c" * (65 << 10))
    assert load_image(tmp_path / "small.gif").shape[:2] == (4, 6)
    # Pillow skips a byte that starts no block, and adds a newline per further comment, even an empty one.
    small, big = (tmp_path / "small.gif").read_bytes(), (tmp_path / "big.gif").read_bytes()
    at, at_big = small.index(b"!\xfe"), big.index(b"!\xfe")
    stray = big[:at_big] + b"\x00" + big[at_big:]  # a stray byte, then the big comment
    empty = small[:at] + b"!\xfe\x00" * (70 << 10) + small[at:]  # 70K empty comments
    # An extension whose first sub-block is empty: Pillow reads on past its terminator (here into a ';' read
    # as a length), so the comments after it are parsed.
    hidden = small[:at] + b"!\x01\x00;" + b"x" * 59 + b"\x00" + b"!\xfe\x00" * (70 << 10) + small[at:]
    for source in (tmp_path / "big.gif", (tmp_path / "big.gif").read_bytes(), stray, empty, hidden):
        with pytest.raises(ImageError, match="GIF with over 64 KiB of comments"):
            load_image(source)


def test_the_gif_scan_counts_at_least_the_comment_pillow_reads():
    """Random block sequences, each read by Pillow and by the scan: the scan never counts less."""
    import random
    from kaldn.images import gif_scan
    buffer = io.BytesIO()
    _palette_image().save(buffer, "GIF")
    gif = buffer.getvalue()
    at = gif.index(b",")  # the image descriptor: blocks go before it
    parts = [b"!\x01\x00", b"!\xfe\x00", b"!\xfe\x03abc\x00", b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00",
             b"!\xff\x00", b"!\xf9\x04\x00\x00\x00\x00\x00", b"\x00", b"x", b";", b"\x05", b"!\xfe\x02ab\x01c\x00"]
    rng, compared = random.Random(0), 0
    for _ in range(400):
        data = gif[:at] + b"".join(rng.choice(parts) for _ in range(rng.randint(0, 12))) + gif[at:]
        try:
            comment = Image.open(io.BytesIO(data)).info.get("comment", b"")
        except Exception:  # noqa: BLE001 - a sequence Pillow refuses is not a question here
            continue
        compared += 1
        assert gif_scan(data).comment_bytes >= len(comment), data
    assert compared > 100


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of a JPEG's segments, a scan's coded data included."""
    out, pos = [], 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if data[pos + 1] == 0xDA:  # coded data runs to the next marker that is not stuffing or a restart
            while data[(end := data.index(b"\xff", end)) + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 2
        out.append((data[pos + 1], pos, end))
        pos = end
    return out


def test_a_jpeg_of_many_scans_is_refused_before_decoding():
    """A progressive JPEG decodes one scan at a time over the whole image, and a scan can take 16 bytes: repeated,
    a 41 kB file of 4 MP held a worker 6 s, 25 MB would hold it for hours, uninterruptibly."""
    from kaldn.images import MAX_JPEG_SCANS, jpeg_scans
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, "JPEG", progressive=True, quality=90)
    progressive = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, "JPEG", quality=90)
    assert jpeg_scans(progressive) == 10 and jpeg_scans(buf.getvalue()) == 1
    assert jpeg_scans(b"\xff\xd8" + b"\x00" * 20) == 0
    _, start, end = [s for s in _jpeg_segments(progressive) if s[0] == 0xDA][-1]
    for extra, refused in ((MAX_JPEG_SCANS - 10, False), (MAX_JPEG_SCANS - 9, True)):
        data = progressive[:end] + progressive[start:end] * extra + progressive[end:]
        assert jpeg_scans(data) == min(10 + extra, MAX_JPEG_SCANS + 1)
        if refused:
            with pytest.raises(ImageError, match="over 100 scans or 4,096 segments"):
                load_image(data, name="x.jpg")
        else:
            assert load_image(data).shape == (64, 64, 3)  # repeated scans decode (libjpeg warns only)
    many = progressive[:end] + progressive[start:end] * 500 + progressive[end:]
    # A stray byte before a marker, which libjpeg skips, hides no scan; nor does a marker libjpeg reads without a
    # length (after a restart interval it resyncs past an unknown one), whatever bytes follow it.
    assert jpeg_scans(many[:2] + b"\x00" + many[2:]) == MAX_JPEG_SCANS + 1
    hidden = progressive[:start] + b"\xff\x05\xff\xf0" + progressive[start:end] * 60 + progressive[end:]
    assert jpeg_scans(hidden) == 9 + 60  # the last scan, repeated 60 times
    # Endless empty segments are refused as well (a step each); so are under-length ones.
    from kaldn.images import MAX_JPEG_SEGMENTS
    for empty in (b"\xff\xe0\x00\x02", b"\xff\xe0\x00\x00"):
        assert jpeg_scans(progressive[:2] + empty * MAX_JPEG_SEGMENTS + progressive[2:]) == MAX_JPEG_SCANS + 1
    with pytest.raises(ImageError, match="over 100 scans"):
        load_image(many[:2] + b"\x00" + many[2:])
    # Bytes 0xFFDA in a segment (an ICC profile, EXIF, a comment between scans) or after the end of the image (a
    # motion photo's video) are no scans.
    payload = b"\xff\xda" * 1000
    segment = b"\xff\xe5" + (len(payload) + 2).to_bytes(2, "big") + payload
    comment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    for data in (progressive[:2] + segment + progressive[2:], progressive[:end] + comment + progressive[end:],
                 progressive + payload * 1000):
        assert jpeg_scans(data) == 10 and load_image(data).shape == (64, 64, 3)


def test_a_jpeg_of_many_scans_inside_a_tiff_is_stopped_by_libtiff(monkeypatch):
    """No scan count for TIFFs (their strips are many JPEG streams): libtiff refuses a stream of over 100 scans
    itself (unless LIBTIFF_JPEG_MAX_ALLOWED_SCAN_NUMBER raises it). If this fails, libtiff no longer does, and TIFFs
    need the JPEG check per strip."""
    monkeypatch.delenv("LIBTIFF_JPEG_MAX_ALLOWED_SCAN_NUMBER", raising=False)
    image = Image.fromarray(_rgb(64, 64))
    buf = io.BytesIO()
    image.save(buf, "TIFF", compression="jpeg", tiffinfo={278: 64})  # one strip
    tiff = buf.getvalue()
    buf = io.BytesIO()
    image.save(buf, "JPEG", progressive=True, quality=90, subsampling=0)
    stream = buf.getvalue()
    start, end = stream.rindex(b"\xff\xda"), len(stream) - 2

    def with_scans(repeats: int) -> bytes:  # the strip pointed at a progressive stream with its last scan repeated
        strip, patched = stream[:end] + stream[start:end] * repeats + stream[end:], bytearray(tiff)
        ifd = struct.unpack_from("<I", patched, 4)[0]
        for k in range(struct.unpack_from("<H", patched, ifd)[0]):
            entry = ifd + 2 + 12 * k
            tag, kind = struct.unpack_from("<HH", patched, entry)
            if tag in (273, 279):
                struct.pack_into("<I" if kind == 4 else "<H", patched, entry + 8,
                                 len(patched) if tag == 273 else len(strip))
        return bytes(patched) + strip
    assert load_image(with_scans(0)).shape == (64, 64, 3)  # 10 scans decode
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(with_scans(500))
