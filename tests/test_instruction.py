import json

import numpy as np
import pytest
from PIL import Image

from dragnext.instruction import (
    Drag,
    EditItem,
    Instruction,
    InvalidItemError,
    read_instruction,
    validate_item,
)
from tests.conftest import disc, save_mask


def load(folder, spec, item_id="it"):
    path = folder / "drag.json"
    path.write_text(json.dumps(spec) if isinstance(spec, dict) else spec)
    image = Image.open(folder / "image.png").convert("RGB")
    return validate_item(EditItem(image, read_instruction(path, item_id), item_id))


def expect(folder, spec, field, reason):
    with pytest.raises(InvalidItemError) as caught:
        load(folder, spec)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value).startswith("item 'it': " + field)


def test_a_valid_instruction_loads_with_its_masks(scene):
    folder, spec = scene
    item = load(folder, spec)
    drags = item.instruction.drags
    assert [d.type for d in drags] == ["translate", "rotate"]
    assert drags[0].handle_mask.shape == (96, 128) and drags[0].handle_mask.dtype == bool
    assert drags[1].center == (95, 70) and item.instruction.prompt.startswith("a red disc")
    assert item.editable.all() and item.instruction.warnings == ()


def test_a_handle_mask_of_the_wrong_size(scene):
    folder, spec = scene
    save_mask(folder / "small.png", np.ones((10, 10), dtype=bool))
    spec["drags"][0]["handle_mask"] = "small.png"
    expect(folder, spec, "drags[0].handle_mask", "mask is 10x10, image is 128x96")


def test_a_rotate_without_centre(scene):
    folder, spec = scene
    del spec["drags"][1]["center"]
    expect(folder, spec, "drags[1].center", "required for a rotate drag")


def test_a_centre_on_a_translate(scene):
    folder, spec = scene
    spec["drags"][0]["center"] = [1, 1]
    expect(folder, spec, "drags[0].center", "only allowed for rotate")


def test_a_centre_equal_to_the_handle(scene):
    folder, spec = scene
    spec["drags"][1]["center"] = spec["drags"][1]["handle"]
    expect(folder, spec, "drags[1].center", "angle is undefined")


@pytest.mark.parametrize("point", [[128, 10], [-1, 10], [10, 96]])
def test_a_point_outside_the_image(scene, point):
    folder, spec = scene
    spec["drags"][0]["target"] = point
    expect(folder, spec, "drags[0].target", "outside the 128x96 image")


def test_an_empty_mask(scene):
    folder, spec = scene
    save_mask(folder / "empty.png", np.zeros((96, 128), dtype=bool))
    spec["drags"][1]["handle_mask"] = "empty.png"
    expect(folder, spec, "drags[1].handle_mask", "mask is empty")


def test_a_missing_mask_file(scene):
    folder, spec = scene
    spec["editable_mask"] = "nowhere.png"
    expect(folder, spec, "editable_mask", "does not exist")


def test_malformed_json(scene):
    folder, _ = scene
    expect(folder, '{"drags": [', "instruction", "is not valid JSON (line 1")


@pytest.mark.parametrize("change,field,reason", [
    (lambda s: s["drags"][0].update(type="twist"), "drags[0].type", "translate"),
    (lambda s: s["drags"][0].pop("target"), "drags[0].target", "required"),
    (lambda s: s["drags"][0].update(handle=[1, 2, 3]), "drags[0].handle", "at most 2"),
    (lambda s: s.update(drags=[]), "drags", "at least one"),
    (lambda s: s.update(colour="red"), "colour", "Extra inputs"),
])
def test_structural_errors_name_the_field(scene, change, field, reason):
    folder, spec = scene
    change(spec)
    expect(folder, spec, field, reason)


def test_nan_points_are_refused():
    image = Image.new("RGB", (16, 16))
    drag = Drag("translate", np.ones((16, 16), dtype=bool), (float("nan"), 1.0), (2.0, 2.0))
    with pytest.raises(InvalidItemError, match=r"drags\[0\]\.handle: .* not a finite point"):
        validate_item(EditItem(image, Instruction(drags=(drag,))))


def test_a_handle_partly_outside_the_editable_mask_is_intersected_with_a_warning(scene):
    folder, spec = scene
    editable = np.zeros((96, 128), dtype=bool)
    editable[:, :40] = True  # cuts the disc (centre x=40) in half; the bar is wholly outside
    spec["editable_mask"] = save_mask(folder / "editable.png", editable)
    spec["drags"] = spec["drags"][:1]
    item = load(folder, spec)
    handle = item.instruction.drags[0].handle_mask
    assert handle.sum() < disc(96, 128, 40, 40, 10).sum() and not handle[:, 40:].any()
    assert "outside the editable mask were dropped" in item.instruction.warnings[0]


def test_a_handle_wholly_outside_the_editable_mask_is_an_error(scene):
    folder, spec = scene
    editable = np.zeros((96, 128), dtype=bool)
    editable[:, :20] = True
    spec["editable_mask"] = save_mask(folder / "editable.png", editable)
    expect(folder, spec, "drags[0].handle_mask", "entirely outside the editable mask")


def test_a_drag_whose_handle_is_its_target_is_reported_as_a_noop(scene):
    folder, spec = scene
    spec["drags"][0]["target"] = spec["drags"][0]["handle"]
    item = load(folder, spec)
    assert any("drags[0]: handle equals target" in w for w in item.instruction.warnings)


def test_the_shipped_example_is_valid():
    folder = __import__("pathlib").Path(__file__).parent.parent / "examples" / "shapes"
    image = Image.open(folder / "image.png").convert("RGB")
    item = validate_item(EditItem(image, read_instruction(folder / "drag.json"), "shapes"))
    assert [d.type for d in item.instruction.drags] == ["translate", "rotate"]
    assert item.instruction.warnings == ()


def scale_drag(spec, **fields):
    """The scene's bar (x 80..109, y 66..73) as a scale about its left end."""
    spec["drags"] = [{"type": "scale", "handle_mask": "h1.png", "handle": [108, 70], "target": [100, 70],
                      "center": [80, 70], **fields}]
    return spec


def test_a_scale_drag_loads_with_its_factors_in_the_record(scene):
    folder, spec = scene
    item = load(folder, scale_drag(spec))
    assert item.instruction.warnings == ()
    record = item.to_record()["drags"][0]
    assert record["axis"] == "uniform" and record["factors"] == pytest.approx([20 / 28, 20 / 28])
    free = load(folder, scale_drag(spec, handle=[108, 72], target=[94, 74], axis="free"))
    assert free.instruction.drags[0].factors == pytest.approx((0.5, 2.0))


@pytest.mark.parametrize("fields,field,reason", [
    ({"center": None}, "drags[0].center", "required for a scale drag"),
    ({"center": [108, 70]}, "drags[0].center", "equals the handle, so the scale factor is undefined"),
    ({"target": [60, 70]}, "drags[0].target", "not on the handle's side of the centre"),
    ({"target": [81, 70]}, "drags[0].target", "scale factor s = 0.0357 is outside [0.25, 4]"),
    ({"target": [107.893, 67.560]}, "drags[0].target", "scale factor is 1"),
    ({"target": [80, 42]}, "drags[0].target", "not on the handle's side"),
    ({"axis": "free"}, "drags[0].handle", "has the centre's y = 70"),
    ({"axis": "free", "handle": [108, 72], "target": [120, 60]}, "drags[0].target",
     "s_y = -5: the target is not on the handle's side"),
    ({"axis": "diagonal"}, "drags[0].axis", "'uniform' or 'free'"),
])
def test_a_bad_scale_is_refused_naming_the_field(scene, fields, field, reason):
    folder, spec = scene
    expect(folder, scale_drag(spec, **fields), field, reason)


def test_an_axis_on_a_translate_is_refused(scene):
    folder, spec = scene
    spec["drags"][0]["axis"] = "free"
    expect(folder, spec, "drags[0].axis", "only allowed for scale drags, not translate")


def test_a_scale_past_the_border_or_off_the_ray_is_loaded_with_warnings(scene):
    folder, spec = scene
    clipped = load(folder, scale_drag(spec, target=[140 - 13, 70]))  # s ~ 1.68: the bar reaches x ~ 130
    assert any("handle pixels scale to outside the image and are clipped" in w
               for w in clipped.instruction.warnings)
    off_ray = load(folder, scale_drag(spec, target=[96, 80]))
    assert any("off the ray from the centre through the handle" in w for w in off_ray.instruction.warnings)


def test_a_deform_may_name_an_anchor_on_the_far_side_of_its_handle(scene):
    folder, spec = scene
    bar = {"type": "deform", "handle_mask": "h1.png", "handle": [108, 70], "target": [118, 70]}
    spec["drags"] = [{**bar, "center": [80, 70]}]
    assert load(folder, spec).instruction.drags[0].center == (80, 70)
    spec["drags"] = [{**bar, "center": [80, 70], "target": [70, 70]}]
    expect(folder, spec, "drags[0].target", "on the handle's side of the anchor")
    spec["drags"] = [{**bar, "center": [108, 70]}]
    expect(folder, spec, "drags[0].center", "equals the handle, so the stretch axis is undefined")
