"""Real photos in and out (`dragnext.photo`, `dragnext.photo_file`) through `dragnext edit`:
orientation, colour profiles, alpha, bit depth, formats, metadata and provenance, and the
input's own pixels kept outside the edit."""

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageCms

from bench.cases import make_case
from dragnext.metrics import colour_mask, iou, score_drag
from dragnext.photo import photo_of
from fixture import FIXTURE_MODEL
from tests.conftest import FAST, disc
from tests.photos import display_p3_icc, jpeg_bytes, stored_sideways


def edit(model, folder, image: bytes, spec: dict, out: str = "edited.png", *sets: str) -> Image.Image:
    from command.main import main

    (folder / "image").write_bytes(image)
    (folder / "drag.json").write_text(json.dumps(spec))
    args = ["-q", "edit", "--model", str(model), "--image", str(folder / "image"),
            "--instruction", str(folder / "drag.json"), "--out", str(folder / out), "--device", "cpu"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    return Image.open(folder / out)


def save_mask(folder, mask: np.ndarray, name: str) -> str:
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / name)
    return name


def png_bytes(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def translate_spec(folder, height, width, cx, cy, r, dx, margin=6) -> tuple[dict, np.ndarray]:
    handle = disc(height, width, cx, cy, r)
    editable = np.zeros((height, width), bool)
    editable[int(cy - r - margin):int(cy + r + margin), int(cx - r - margin):int(cx + r + dx + margin)] = True
    spec = {"prompt": "a disc", "editable_mask": save_mask(folder, editable, "m.png"),
            "drags": [{"type": "translate", "handle_mask": save_mask(folder, handle, "h.png"),
                       "handle": [cx, cy], "target": [cx + dx, cy]}]}
    return spec, editable


def test_a_sideways_phone_picture_is_edited_upright_where_its_drag_was_drawn(tmp_path):
    """Stored turned a quarter with EXIF orientation 6; the drag drawn on the upright picture."""
    from tests.scenes import write_case

    case = make_case("translate", 1)
    _, instruction = write_case(case, tmp_path)
    upright = case.scene.render()
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = png_bytes(Image.fromarray(stored_sideways(upright)), exif=exif.tobytes())
    out = edit(FIXTURE_MODEL, tmp_path, sideways, json.loads(instruction.read_text()))
    assert out.size == (upright.shape[1], upright.shape[0])
    assert out.getexif().get(0x0112, 1) == 1  # written upright
    original, expected = case.object_masks()
    assert score_drag(colour_mask(np.asarray(out.convert("RGB")), case.colour), expected, original).success


def test_a_display_p3_photo_keeps_its_profile_and_its_pixels_outside_the_edit(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(0)
    height, width = 96, 128
    pixels = rng.integers(40, 216, (height, width, 3), dtype=np.uint8)
    pixels[disc(height, width, 40, 48, 10)] = (230, 40, 40)
    icc = display_p3_icc()
    spec, editable = translate_spec(tmp_path, height, width, 40, 48, 10, 20)
    out = edit(tiny_model_dir, tmp_path, png_bytes(Image.fromarray(pixels), icc_profile=icc), spec, "e.png",
               *FAST)
    assert out.info.get("icc_profile") == icc
    assert np.array_equal(np.asarray(out)[~editable], pixels[~editable])  # the file's own values
    srgb = photo_of(Image.open(io.BytesIO(png_bytes(Image.fromarray(pixels), icc_profile=icc)))).image
    assert not np.array_equal(np.asarray(srgb), pixels)  # the model saw sRGB, converted


def test_a_2048_px_photo_is_bit_identical_outside_the_edit_with_the_defaults(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(1)
    height, width = 1536, 2048
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[disc(height, width, 700, 760, 160)] = (30, 200, 60)
    spec, editable = translate_spec(tmp_path, height, width, 700, 760, 160, 300, margin=40)
    out = np.asarray(edit(tiny_model_dir, tmp_path, png_bytes(Image.fromarray(pixels)), spec, "e.png", *FAST))
    assert np.array_equal(out[~editable], pixels[~editable])
    assert not np.array_equal(out[editable], pixels[editable])  # and the edit is there


def test_a_cut_out_product_stays_cut_out_and_its_alpha_follows_it(tiny_model_dir, tmp_path):
    height, width, dx = 64, 96, 24
    product = disc(height, width, 30, 32, 12)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = (0, 0, 0)  # what lies under transparent pixels is not what the model sees
    rgba[product] = (200, 60, 220, 255)
    spec, editable = translate_spec(tmp_path, height, width, 30, 32, 12, dx)
    out = edit(tiny_model_dir, tmp_path, png_bytes(Image.fromarray(rgba, "RGBA")), spec, "e.png", *FAST)
    assert out.mode == "RGBA"
    alpha = np.asarray(out.getchannel("A"))
    assert np.array_equal(alpha[~editable], rgba[..., 3][~editable])
    expected = disc(height, width, 30 + dx, 32, 12)
    assert iou(alpha > 127, expected) >= 0.9


def test_a_16_bit_grey_png_comes_back_16_bit_with_its_own_values_outside_the_edit(tiny_model_dir, tmp_path):
    height, width = 64, 96
    grey = np.random.default_rng(2).integers(0, 65536, (height, width), dtype=np.uint16)
    spec, editable = translate_spec(tmp_path, height, width, 30, 32, 10, 20)
    out = edit(tiny_model_dir, tmp_path, png_bytes(Image.fromarray(grey)), spec, "e.png", *FAST)
    assert out.mode in ("I;16", "I")
    values = np.asarray(out, dtype=np.uint32)
    assert np.array_equal(values[~editable], grey[~editable])
    assert len(np.unique(values[editable] % 257)) > 1 or values.max() > 255  # 16-bit values, not 8


def test_a_cmyk_jpeg_is_read_as_its_colours(tmp_path):
    rgb = Image.new("RGB", (32, 32), (200, 40, 40))
    out = io.BytesIO()
    rgb.convert("CMYK").save(out, format="JPEG", quality=98)
    photo = photo_of(Image.open(io.BytesIO(out.getvalue())))
    assert photo.image.mode == "RGB" and photo.own.shape == (32, 32, 3)
    assert np.abs(np.asarray(photo.image, int) - (200, 40, 40)).max() <= 8


@pytest.mark.parametrize("fmt,suffix", [("jpeg", ".jpg"), ("webp", ".webp")])
def test_jpeg_and_webp_outputs_carry_quality_exif_icc_and_provenance(tiny_model_dir, tmp_path, fmt, suffix):
    height, width = 64, 96
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8))
    icc = display_p3_icc()
    spec, _ = translate_spec(tmp_path, height, width, 30, 32, 10, 20)
    source = jpeg_bytes(photo, orientation=1, icc=icc)
    out = edit(tiny_model_dir, tmp_path, source, spec, "e" + suffix, *FAST, "output.quality=60")
    assert out.format == fmt.upper() and out.info.get("icc_profile") == icc
    assert out.getexif().get(0x010F) == "TestCam" and out.getexif().get(0x0112, 1) == 1
    assert b'dragnext:action="edited"' in out.info["xmp"] and b'dragnext:item_id="e"' in out.info["xmp"]
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["config"]["output"]["format"] == fmt and record["config"]["output"]["quality"] == 60
    assert record["config"]["output"]["format"] == fmt
    stripped = edit(tiny_model_dir, tmp_path, source, spec, "s" + suffix, *FAST, "output.strip_metadata=true")
    assert stripped.info.get("icc_profile") is None and not stripped.getexif()
    assert b"dragnext:action" in stripped.info["xmp"]  # provenance stays


def test_a_corrupt_colour_profile_is_one_line_naming_the_item(tmp_path, capsys):
    from command.main import main

    (tmp_path / "bad.png").write_bytes(png_bytes(Image.new("RGB", (32, 32)), icc_profile=b"not a profile"))
    (tmp_path / "drag.json").write_text(json.dumps({"drags": [{"type": "translate", "handle": [5, 5],
                                                               "target": [9, 9]}]}))
    code = main(["-q", "edit", "--model", str(tmp_path / "unused"), "--image", str(tmp_path / "bad.png"),
                 "--instruction", str(tmp_path / "drag.json"), "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "ICC profile" in err[0] and "'o'" in err[0]


def test_the_studio_sees_the_upright_colour_managed_picture():
    from dragnext.instruction import read_image
    from studio.author import png

    up = np.zeros((40, 60, 3), np.uint8)
    up[5:10, 5:20] = (250, 20, 20)
    data = jpeg_bytes(Image.fromarray(stored_sideways(up)), orientation=6, icc=display_p3_icc())
    shown = Image.open(io.BytesIO(png(read_image(io.BytesIO(data), "x"))))
    assert shown.size == (60, 40)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_icc()))
    as_srgb = ImageCms.profileToProfile(Image.fromarray(up), profile, ImageCms.createProfile("sRGB"))
    assert np.abs(np.asarray(shown, int)[7, 10] - np.asarray(as_srgb, int)[7, 10]).max() <= 12


def test_an_iphone_heic_picture_is_read_with_its_orientation():
    from dragnext.instruction import read_photo
    from dragnext.photo import register_heif

    assert register_heif()  # the test extra installs pillow-heif
    up = np.zeros((40, 60, 3), np.uint8)
    up[5:15, 5:25] = (240, 200, 20)
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored_sideways(up)).save(out, format="HEIF", quality=95, exif=exif.tobytes())
    photo = read_photo(io.BytesIO(out.getvalue()), "iphone")
    assert photo.source_mode == "RGB" and photo.size == (60, 40)
    assert np.abs(np.asarray(photo.image, int)[10, 15] - (240, 200, 20)).max() <= 16
