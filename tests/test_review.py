"""Flags for bulk review (`dragnext.review`): on benchmark cases the ground truth passes and
the unedited input is flagged; a picture changed outside M is flagged; thresholds can be
turned off; flags never enter a digest."""

import numpy as np
import pytest
from PIL import Image

from bench.cases import TYPES, make_case
from bench.run import item_of
from dragnext.config import EditConfig, ReviewConfig, build_config
from dragnext.metrics import image_fidelity
from dragnext.review import review_reasons


def flags(case, edited: np.ndarray, config: ReviewConfig | None = None) -> list[str]:
    item = item_of(case)
    return review_reasons(image_fidelity(item.image, Image.fromarray(edited), item), config or ReviewConfig())


@pytest.mark.parametrize("kind", TYPES)
def test_the_ground_truth_passes_and_the_unedited_input_is_flagged(kind):
    unflagged = 0
    for seed in range(10):
        case = make_case(kind, seed)
        assert flags(case, case.expected.render()) == [], (kind, seed)
        reasons = flags(case, case.scene.render())
        assert len(reasons) <= 1 and all(r.startswith("drag not done: ") for r in reasons), reasons
        unflagged += not reasons
    # a small scale about the shape's own centre leaves most of it in place: its unchanged
    # input can pass for an edit (half of them on the tuning seeds, docs/review-thresholds.json)
    assert unflagged <= (5 if kind == "scale" else 0), kind


def test_a_picture_changed_outside_the_editable_mask_is_flagged():
    case = make_case("translate", 0)
    edited = case.expected.render().copy()
    outside = ~item_of(case).editable
    edited[outside] = 255 - edited[outside]  # the background inverted: the drag itself is right
    [reason] = flags(case, edited)
    assert reason.startswith("outside changed: IF_ed = ")
    assert flags(case, edited, ReviewConfig(min_if_ed=None)) == []  # None turns a flag off


def test_review_thresholds_do_not_change_digests():
    base = build_config(overrides=[])
    stricter = build_config(overrides=["review.min_if_ed=0.99", "review.min_drag_gap=0.2"])
    assert base.output_record() == stricter.output_record()
    assert "review" in base.to_record() and "review" not in base.output_record()
    assert EditConfig().review == ReviewConfig()
