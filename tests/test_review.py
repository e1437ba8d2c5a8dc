"""Flags for bulk review (`dragnext.review`): on benchmark cases the ground truth passes and
the unedited input is flagged; a picture changed outside M is flagged; thresholds can be
turned off; flags never enter a digest."""

import numpy as np
import pytest
from PIL import Image

from bench.cases import TYPES, make_case
from bench.run import item_of
from dragnext.config import EditConfig, ReviewConfig, build_config
from dragnext.metrics import colour_mask, image_fidelity, warp_agreement
from dragnext.review import review_reasons

SHAPE_FLAGS = ReviewConfig(min_drag_gap=None, min_if_ed=None, max_target_err=12, max_vacated_residual=0.1)


def flags(case, edited: np.ndarray, config: ReviewConfig | None = None) -> list[str]:
    item = item_of(case)
    image = Image.fromarray(edited)
    metrics = {**image_fidelity(item.image, image, item), **warp_agreement(item.image, image, item)}
    return review_reasons(metrics, config or ReviewConfig())


@pytest.mark.parametrize("kind", TYPES)
def test_the_ground_truth_passes_and_the_unedited_input_is_flagged(kind):
    for seed in range(10):
        case = make_case(kind, seed)
        assert flags(case, case.expected.render()) == [], (kind, seed)
        assert flags(case, case.scene.render()), (kind, seed)  # the shape flags catch what the gap misses
        gap = flags(case, case.scene.render(), ReviewConfig(max_target_err=None, max_vacated_residual=None))
        assert all(r.startswith("drag not done: ") for r in gap), gap


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


@pytest.mark.parametrize("kind", TYPES)
def test_the_shape_flags_pass_the_ground_truth_and_catch_the_input_left_in_place(kind):
    caught = 0
    for seed in range(10):
        case = make_case(kind, seed)
        assert flags(case, case.expected.render(), SHAPE_FLAGS) == [], (kind, seed)
        caught += bool(flags(case, case.scene.render(), SHAPE_FLAGS))
    assert caught >= (5 if kind == "deform" else 8), kind  # a stretch vacates nothing, a bend little


def test_an_object_that_arrives_in_another_colour_or_leaves_a_ghost_is_flagged():
    case = make_case("translate", 1)
    expected = case.expected.render()
    recoloured = expected.copy()
    recoloured[colour_mask(expected, case.colour)] = (20, 20, 20)  # a green triangle come out black
    [reason] = flags(case, recoloured, SHAPE_FLAGS)
    assert reason.startswith("wrong object: target_err = ")
    ghosted = expected.copy()
    old = colour_mask(case.scene.render(), case.colour) & ~colour_mask(expected, case.colour)
    ghosted[old] = case.scene.render()[old]
    assert any(r.startswith("ghost left: vacated_residual = ") for r in flags(case, ghosted, SHAPE_FLAGS))


def test_the_thresholds_are_tuned_together_within_the_review_budget():
    from bench.review_thresholds import caught, tune

    def case(i, target_err, residual, good):
        return {"case_id": f"translate-{i:04d}", "type": "translate", "if_ed": 1.0, "if_th": 0.9,
                "if_hh": 0.5, "target_err": target_err, "vacated_residual": residual,
                "success": 1.0, "success_strict": float(good)}

    successes = [case(i, 5 + i, 0.0, True) for i in range(20)]  # target_err 5 … 24
    misses = [case(20 + i, 30 + i, 0.0, False) for i in range(5)] + \
             [case(30 + i, 8.0, 0.6, False) for i in range(5)]  # right colour, a ghost
    groups = {"misses": misses, "unedited": [], "successes": successes}
    chosen = tune(groups, max_flagged=0.1)
    assert chosen["min_drag_gap"] is None and chosen["min_if_ed"] is None  # they separate nothing
    # midway between the good edits and the bad (a value at the good edits' edge would flag
    # the first photo a little worse than the bench's flat colours)
    assert chosen["max_target_err"] == 27.0 and chosen["max_vacated_residual"] == 0.3
    assert caught(groups, chosen, 0.1) == (10, 0)  # every miss, and no look at a good edit
    assert caught(groups, chosen | {"max_target_err": 10.0}, 0.1) == (-1, 0)  # over the budget


def test_tuning_takes_flags_with_no_values_and_cases_in_bigger_pictures():
    from bench.review_thresholds import candidates, unedited

    assert candidates([None, None], "max_vacated_residual") == []  # every case grew: nothing vacated
    assert candidates([0.2], "max_vacated_residual") == [0.1999]
    big = unedited({"case_id": "translate-0003.x4", "type": "translate"})
    assert big["vacated_residual"] == 1.0 and big["if_ed"] == 1.0
