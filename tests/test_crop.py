"""Edit where the edit is: a small object in a big picture is edited on the box around its
drags, at the working size, and put back at full resolution (`dragnext.crop`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.cases import enlarged, make_case
from bench.run import item_of, score
from dragnext.config import CropConfig, build_config
from dragnext.crop import crop_box, crop_item, uncrop
from dragnext.geometry import swept_region
from dragnext.stages import region_drags
from fixture import FIXTURE_MODEL
from tests.conftest import FAST


def test_the_box_holds_what_the_drags_touch_with_context_and_never_less_than_the_working_size():
    item = item_of(enlarged(make_case("rotate", 3), 4))  # 256 px, the shape near (160, 60)
    box = crop_box(item, 64, CropConfig())
    assert box is not None and box.width >= 64 and box.height >= 64
    assert 0 <= box.left and box.left + box.width <= 256 and 0 <= box.top and box.top + box.height <= 256
    touched = swept_region(region_drags(item, (256, 256))).numpy()
    inside = np.zeros_like(touched)
    inside[box.top:box.top + box.height, box.left:box.left + box.width] = True
    assert touched.any() and not (touched & ~inside).any()
    wider = crop_box(item, 64, CropConfig(margin=1.0))
    assert wider.width * wider.height > box.width * box.height
    assert crop_box(item, 64, CropConfig(enabled=False)) is None
    assert crop_box(item, 256, CropConfig()) is None  # no larger than the working size: all of it
    assert crop_box(item_of(make_case("rotate", 3)), 64, CropConfig()) is None


def test_the_cropped_item_is_the_same_drag_on_the_box():
    item = item_of(enlarged(make_case("scale", 5), 4))
    box = crop_box(item, 64, CropConfig())
    inner = crop_item(item, box)
    pixels = np.asarray(item.image)[box.top:box.top + box.height, box.left:box.left + box.width]
    assert inner.size == (box.width, box.height) and np.array_equal(np.asarray(inner.image), pixels)
    [drag], [inner_drag] = item.instruction.drags, inner.instruction.drags
    assert inner_drag.handle == (drag.handle[0] - box.left, drag.handle[1] - box.top)
    assert inner_drag.center == (drag.center[0] - box.left, drag.center[1] - box.top)
    assert inner_drag.factors == drag.factors  # a scale is relative: the same on the box
    assert inner_drag.handle_mask.sum() == drag.handle_mask.sum()  # all of ϑ is in the box
    # the box's own pixels put back give the input back, bit for bit, feather or not
    image, weight = uncrop(item, box, inner.image, None)
    assert np.array_equal(np.asarray(image), np.asarray(item.image))
    assert weight.max() == 1 and (weight[:box.top] == 0).all() and (weight[:, :box.left] == 0).all()


def test_a_big_photo_is_edited_on_its_box_and_only_the_box_changes(tiny_model_dir, tmp_path):
    """Without any paste the whole working image is the model's: only the box's pixels may differ."""
    from dragnext.edit import edit
    from dragnext.model import load_model

    case = enlarged(make_case("translate", 2), 8)  # 512 px, the working size 64
    item = item_of(case)
    config = build_config(None, [*FAST, "output.paste_background=false", "output.paste_moved=false"])
    result = edit(item.image, item.instruction, load_model(str(tiny_model_dir), device="cpu"), config)
    box = result.crop
    assert box is not None and result.image.size == (512, 512)
    assert result.to_record()["crop"] == box.to_record()
    assert result.working_size == (64, 64)  # the box at the working size, not the picture shrunk 8x
    outside = np.ones((512, 512), bool)
    outside[box.top:box.top + box.height, box.left:box.left + box.width] = False
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(item.image)[outside])
    assert not np.array_equal(np.asarray(result.image)[~outside], np.asarray(item.image)[~outside])


@pytest.mark.integration
def test_the_crop_keeps_a_small_object_sharp_where_shrinking_the_picture_smears_it(tmp_path):
    """Through the `dragnext edit` command, with the fixture model and its preset."""
    from command.main import main
    from tests.scenes import write_case

    case = enlarged(make_case("translate", 0), 4)
    image, instruction = write_case(case, tmp_path)
    item = item_of(case)
    scores = {}
    for crop in ("true", "false"):
        out = tmp_path / f"crop-{crop}.png"
        assert main(["-q", "edit", "--model", str(FIXTURE_MODEL), "--image", str(image), "--instruction",
                     str(instruction), "--out", str(out), "--device", "cpu",
                     "--set", f"crop.enabled={crop}"]) == 0
        edited = Image.open(out).convert("RGB")
        assert edited.size == item.size
        scores[crop] = score(case, item, edited, 0.0)
    assert scores["true"]["success_strict"] == 1.0 and scores["false"]["success"] == 0.0
    # the region around it is not smeared (32.3 against 21.5 dB when written)
    assert scores["true"]["psnr_gt"] > scores["false"]["psnr_gt"] + 6


def test_a_thin_part_of_the_handle_stays_in_the_box():
    """A balloon on a long string: the string is under half a cell wide where the box is found."""
    from dragnext.instruction import Drag, EditItem, Instruction

    side = 2000
    handle = np.zeros((side, side), bool)
    handle[900:1000, 900:1000] = True  # the balloon
    handle[1000:1900, 949:951] = True  # its 2 px string
    image = Image.fromarray(np.full((side, side, 3), 128, np.uint8))
    item = EditItem(image, Instruction((Drag("translate", handle, (950.0, 950.0), (1030.0, 950.0)),)))
    box = crop_box(item, 64, CropConfig(margin=0.0))
    inside = np.zeros_like(handle)
    inside[box.top:box.top + box.height, box.left:box.left + box.width] = True
    moved = np.roll(handle, 80, axis=1)
    assert not (handle & ~inside).any() and not (moved & ~inside).any()


def test_a_small_box_in_a_big_picture_is_kept_whole_not_faded_by_the_pictures_feather():
    from dragnext.instruction import Drag, EditItem, Instruction

    side = 2048
    handle = np.zeros((side, side), bool)
    handle[1016:1032, 1016:1032] = True
    image = Image.fromarray(np.full((side, side, 3), 200, np.uint8))
    item = EditItem(image, Instruction((Drag("translate", handle, (1024.0, 1024.0), (1040.0, 1024.0)),)))
    box = crop_box(item, 64, CropConfig())
    assert (box.width, box.height) == (64, 64)
    edited = Image.new("RGB", (box.width, box.height), (0, 0, 0))
    out, weight = uncrop(item, box, edited, None)
    centre = weight[box.top + 16:box.top + 48, box.left + 16:box.left + 48]
    assert (centre == 1).all() and (np.asarray(out)[1024, 1024] == 0).all()  # the edit, not the input


def test_the_photo_memory_bench_measures_one_edit_in_its_own_process(tiny_model_dir, tmp_path):
    from bench.photo_memory import measure, write_photo

    image, instruction = write_photo(tmp_path, 512)
    row = measure(tiny_model_dir, image, instruction, crop=True)
    assert 64 <= row["box"]["width"] < 128 and row["peak_rss_mb"] > 100 and row["seconds"] > 0
    assert Image.open(tmp_path / "edited-True.png").size == (512, 512)
