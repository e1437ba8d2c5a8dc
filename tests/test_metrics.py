import numpy as np
import pytest
from PIL import Image

from dragnext.instruction import Drag, EditItem, Instruction, validate_item
from dragnext.metrics import image_fidelity, ssim_map
from dragnext.preview import preview
from tests.conftest import disc


def scene_with_disc(cx: float, cy: float) -> Image.Image:
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[:48, :64]
    array = np.stack([xs * 3, ys * 4, np.full_like(xs, 90)], -1).astype(np.float32)
    array += rng.normal(0, 6, array.shape)
    array[disc(48, 64, cx, cy, 7)] = (230, 30, 30)
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


@pytest.fixture
def item():
    original = scene_with_disc(18, 20)
    editable = np.zeros((48, 64), dtype=bool)
    editable[5:40, 5:50] = True
    drag = Drag("translate", disc(48, 64, 18, 20, 7), (18, 20), (36, 24))
    return validate_item(EditItem(original, Instruction(drags=(drag,), editable_mask=editable)))


def test_identical_images_score_one_everywhere(item):
    scores = image_fidelity(item.image, item.image, item)
    assert set(scores) == {"if_ed_ssim", "if_th_ssim", "if_hh_ssim"}  # the distance is named
    assert scores["if_ed_ssim"] == pytest.approx(1.0) and scores["if_hh_ssim"] == pytest.approx(1.0)


def test_a_perfectly_moved_region_scores_high_at_the_target_and_low_at_the_handle(item):
    moved = scene_with_disc(36, 24)
    good = image_fidelity(item.image, moved, item)
    unchanged = image_fidelity(item.image, item.image, item)
    assert good["if_th_ssim"] > 0.95 > unchanged["if_th_ssim"]
    assert good["if_hh_ssim"] < 0.9 < unchanged["if_hh_ssim"]


def test_ssim_of_noise_against_a_flat_image_is_low():
    x = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    import torch

    assert float(ssim_map(torch.from_numpy(x), torch.full((1, 3, 32, 32), 0.5)).mean()) < 0.1


def test_the_preview_shows_original_overlay_and_edited_side_by_side(item):
    strip = preview(item, scene_with_disc(36, 24))
    assert strip.height == 4 * 48 and strip.width > 3 * 4 * 64  # 64 px enlarged 4x: ≥ 256 px panels
    left, middle = np.asarray(strip)[:, :256], np.asarray(strip)[:, 256 + 4:512 + 4]  # 4 px gaps
    assert np.array_equal(left[::4, ::4], np.asarray(item.image))
    assert middle[0, 0].sum() < left[0, 0].sum()  # outside M is darkened in the overlay


def test_the_overlay_of_a_scale_marks_the_centre_and_outlines_the_scaled_region():
    from dragnext.preview import HANDLE_TINTS, overlay

    image = Image.new("RGB", (64, 48), (128, 128, 128))
    # a disc of radius 7 at (20, 24) grown 2x about its centre: its outline has radius 14
    drag = Drag("scale", disc(48, 64, 20, 24, 7), (27, 24), (34, 24), center=(20, 24))
    drawn = np.asarray(overlay(validate_item(EditItem(image, Instruction(drags=(drag,))))))
    tint = np.all(drawn == HANDLE_TINTS[0], axis=-1)
    assert tint[24, 4:8].any() and tint[7:11, 20].any()  # the outline of ρ(1), left and top
    assert not tint[24, :4].any() and not tint[12:20, 20].any()  # not outside it, nor inside
    assert tint[24, 17] and tint[21, 20]  # the ring on the centre
    assert tint[24, 24]  # the line from the centre to the handle
