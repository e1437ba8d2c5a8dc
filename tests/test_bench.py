"""The ground-truth benchmark: cases, their manifest, and the success rule."""

import math

import numpy as np
import pytest

from bench.cases import TYPES, make_case
from bench.generate import cases, write
from dragnext.config import EditConfig
from dragnext.metrics import colour_mask, region_psnr, region_ssim, score_drag, score_edit
from dragnext.metrics.ground_truth import widened
from manifests.items import validate_rows
from manifests.schema import read_table
from manifests.uris import UriPolicy
from synthetic.scenes import COLOURS

CASES = cases(30, seed=0)


def score(case, image: np.ndarray):
    original, expected = case.object_masks()
    return score_drag(colour_mask(image, case.colour), expected, original)


@pytest.mark.parametrize("kind", TYPES)
def test_the_unedited_input_scores_zero_and_the_ground_truth_scores_all(kind):
    of_kind = [c for c in CASES if c.type == kind]
    assert len(of_kind) == 30
    assert not any(score(c, c.scene.render()).success for c in of_kind)
    assert all(score(c, c.expected.render()).success for c in of_kind)


def scores(case, image: np.ndarray) -> dict:
    return score_edit(case.scene.render(), image, case.expected.render(), case.colour,
                      case.neighbour_colours, case.editable_mask())


@pytest.mark.parametrize("kind", TYPES)
def test_with_neighbours_the_ground_truth_passes_and_the_unedited_input_fails(kind):
    of_kind = [c for c in CASES if c.type == kind]
    assert sum(c.neighbours > 0 for c in of_kind) >= 27  # a few scenes have no room for one
    for case in of_kind:
        truth, unedited = scores(case, case.expected.render()), scores(case, case.scene.render())
        assert truth["success"] == truth["success_object"] == 1 and truth["psnr_keep"] == math.inf
        assert unedited["success"] == unedited["success_object"] == 0
        if case.neighbours:
            assert truth["neighbour_iou"] == 1.0


@pytest.mark.parametrize("kind", TYPES)
def test_strictly_the_ground_truth_passes_and_the_unedited_input_fails(kind):
    for case in [c for c in CASES if c.type == kind]:
        truth, unedited = scores(case, case.expected.render()), scores(case, case.scene.render())
        assert truth["success_strict"] == 1 and truth["colour_err"] == 0 and truth["ghost"] == 0
        assert truth["iou"] == 1.0 and unedited["success_strict"] == 0


def test_a_ghost_left_at_the_old_place_fails_strictly_though_the_drag_succeeds():
    case = next(c for c in CASES if c.case_id == "translate-0001")
    ghosted = case.expected.render().copy()
    before, after = colour_mask(case.scene.render(), case.colour), colour_mask(ghosted, case.colour)
    old = before & ~after
    rows = np.zeros_like(old)
    rows[::4] = True  # every fourth row of the old place: a ghost, not a second object
    ghosted[old & rows] = case.scene.render()[old & rows]
    result = scores(case, ghosted)
    assert result["success"] == 1 and result["iou"] >= 0.8 and result["centroid_err"] <= 2
    assert 0.15 < result["ghost"] < 0.3 and result["success_strict"] == 0


def test_colour_error_is_the_mean_rgb_error_inside_the_expected_object():
    case = next(c for c in CASES if c.type == "rotate")
    shifted = case.expected.render().astype(int)
    inside = colour_mask(shifted, case.colour)
    shifted[inside] = (shifted[inside] + np.sign(127 - shifted[inside]) * 20).clip(0, 255)
    result = scores(case, shifted.astype(np.uint8))
    assert result["colour_err"] == pytest.approx(20, abs=0.5)  # the object's whole core shifted by 20
    assert result["success_strict"] == 1  # within 40, mask and place intact


def test_a_smeared_object_succeeds_leniently_and_fails_strictly():
    from PIL import Image, ImageFilter

    case = next(c for c in CASES if c.type == "translate" and c.neighbours)
    expected = case.expected.render()
    inside = widened(colour_mask(expected, case.colour), 3)
    blurred = np.asarray(Image.fromarray(expected).filter(ImageFilter.GaussianBlur(2)))
    smeared = np.where(inside[..., None], blurred, expected)
    result = scores(case, smeared)
    assert result["success"] == 1 and result["iou"] < 0.8 and result["success_strict"] == 0


def test_an_edit_that_breaks_a_neighbour_fails_though_the_object_moved():
    case = next(c for c in CASES if c.type == "translate" and c.neighbours)
    broken = case.expected.render().copy()
    neighbour = colour_mask(broken, case.neighbour_colours[0])
    half = neighbour & (np.cumsum(neighbour.sum(axis=1)) > neighbour.sum() / 2)[:, None]
    broken[half] = case.scene.background.render(*broken.shape[:2])[half].round()  # the lower half erased
    result = scores(case, broken)
    assert result["success_object"] == 1 and result["success"] == 0
    assert 0.3 < result["neighbour_iou"] < 0.8 and result["psnr_keep"] < 28  # the target mean


def test_neighbours_lie_in_the_editable_mask_clear_of_the_drag_and_in_their_own_colours():
    touching = 0
    for case in CASES:
        last = len(case.scene.shapes) - 1
        moved = case.expected.shapes[last]
        footprints = (case.scene.coverage(case.shape) > 0) | (case.expected.coverage(moved) > 0)
        for shape in case.scene.shapes[last - case.neighbours:last]:
            body = case.scene.coverage(shape) > 0
            assert not (body & widened(footprints, 1)).any()
            assert (case.editable_mask() | ~body).all()
            assert (body & widened(case.swept_mask(), 5)).any()
            touching += bool((body & case.swept_mask()).any())
            assert colour_mask(case.scene.render(), COLOURS[shape.colour]).sum() >= 12
    assert touching >= 1  # some lie on the path the object travels


def test_a_perfect_result_has_zero_centroid_error_and_full_overlap():
    case = make_case("translate", 3)
    s = score(case, case.expected.render())
    assert s.centroid_err == 0 and s.iou_expected == 1.0


def test_identical_images_have_infinite_psnr_and_unit_ssim():
    image = make_case("rotate", 1).scene.render()
    region = np.ones(image.shape[:2], dtype=bool)
    assert region_psnr(image, image, region) == math.inf
    assert region_ssim(image, image, region) == pytest.approx(1.0)
    noisy = (image.astype(int) + 10).clip(0, 255).astype(np.uint8)
    assert 25 < region_psnr(image, noisy, region) < 30


def test_a_deform_keeps_the_far_end_and_a_rotate_carries_the_handle_to_the_target():
    deform = make_case("deform", 4)  # even seeds: a bend, one end moves about the anchored far end
    assert np.allclose(deform.shape.ends()[0], deform.expected.shapes[-1].ends()[0])
    assert deform.center == deform.shape.ends()[0]
    assert np.allclose(deform.expected.shapes[-1].ends()[1], deform.target)
    stretch = make_case("deform", 7)  # odd seeds: the far end anchored, 30-60% longer
    first, _ = stretch.shape.ends()
    assert stretch.center == first
    assert np.allclose(stretch.expected.shapes[-1].ends(), (first, stretch.target))
    assert 1.3 <= stretch.expected.shapes[-1].half[0] / stretch.shape.half[0] <= 1.6
    assert stretch.handle_mask().sum() == stretch.scene.visible_mask(len(stretch.scene.shapes) - 1).sum()
    rotate = make_case("rotate", 5)
    assert np.allclose(rotate.expected.shapes[-1].ends()[1], rotate.target)
    assert deform.handle_mask().sum() == deform.scene.visible_mask(len(deform.scene.shapes) - 1).sum()


def test_the_generated_manifest_is_valid_and_carries_the_ground_truth(tmp_path):
    manifest = write(CASES[::15], str(tmp_path))
    rows = read_table(manifest).to_pylist()
    assert validate_rows(rows, EditConfig(), UriPolicy(str(tmp_path)), "files") == []
    truth = read_table(str(tmp_path / "ground_truth.parquet")).to_pylist()
    assert [t["item_id"] for t in truth] == [r["item_id"] for r in rows]
    assert {r["drags"][0]["type"] for r in rows} == set(TYPES)


def test_the_bench_command_prints_a_table_and_writes_json_and_a_grid(tiny_model_dir, tmp_path, capsys):
    import json

    from PIL import Image

    from command.main import main
    from tests.conftest import FAST

    out = tmp_path / "bench"
    sets = [a for s in FAST for a in ("--set", s)]
    assert main(["-q", "bench", "--model", str(tiny_model_dir), "--methods", "warp;warp:seed=1", "--n", "1",
                 "--out", str(out), "--json", str(tmp_path / "r.json"), *sets]) == 0
    printed = capsys.readouterr().out
    assert "warp" in printed and "rotate" in printed and "success" in printed
    results = json.loads((tmp_path / "r.json").read_text())
    warp = results["methods"]["warp"]
    assert set(warp["by_type"]) == set(TYPES) and warp["overall"]["n"] == len(TYPES)
    for row in [warp["overall"], *warp["by_type"].values()]:
        assert {"success", "centroid_err", "psnr_gt", "if_ed", "if_th", "if_hh", "seconds", "n"} <= set(row)
    assert results["methods"]["warp:seed=1"]["config"]["seed"] == 1  # a variant: in the JSON ...
    oracle = results["methods"]["oracle"]  # always added: the ceiling
    assert oracle["config"]["method"] == "dragnext" and oracle["overall"]["n"] == len(TYPES)
    assert {"success_strict", "iou", "colour_err", "ghost"} <= set(oracle["overall"])
    assert results["paired_keep"] == []  # the oracle is the ceiling, not a peer
    # ... not the grid: input, instruction, expected, warp, oracle
    assert Image.open(out / "grid.png").size[0] == 5 * 258
    assert "strict" in printed and "oracle" in printed
    assert (out / "manifest.parquet").exists() and (out / "ground_truth.parquet").exists()


def test_methods_share_one_finetune_per_case_and_are_each_charged_for_it(tiny_model, monkeypatch):
    import importlib

    from bench import run
    from dragnext.config import build_config
    from tests.conftest import FAST

    calls = []
    stages = importlib.import_module("dragnext.stages")
    real = stages.train_lora

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "train_lora", counted)
    picked = cases(1, seed=3)[:2]
    methods = [run.Method.parse("warp"), run.Method.parse("warp:seed=0"),
               run.Method.parse("warp:lora.rank=4")]
    base = build_config(overrides=FAST).to_record()
    results, _ = run.run(tiny_model, picked, methods, base, quiet=True)
    assert len(calls) == 2 * len(picked)  # the rank-4 LoRA is a different finetune
    first, second = (results["methods"][m.label]["overall"]["seconds"] for m in methods[:2])
    assert second > 0.5 * first


def test_the_bench_runs_only_the_types_asked_for(tiny_model_dir, tmp_path, capsys):
    import json

    from command.main import main
    from tests.conftest import FAST

    sets = [a for s in FAST for a in ("--set", s)]
    assert main(["-q", "bench", "--model", str(tiny_model_dir), "--methods", "warp", "--n", "2",
                 "--types", "scale", "--out", str(tmp_path / "b"), "--json", str(tmp_path / "r.json"),
                 *sets]) == 0
    warp = json.loads((tmp_path / "r.json").read_text())["methods"]["warp"]
    assert list(warp["by_type"]) == ["scale"] and warp["overall"]["n"] == 2
    with pytest.raises(SystemExit):
        main(["bench", "--types", "scale,shear"])
    assert "shear: not one of translate, deform, rotate, scale" in capsys.readouterr().err


def test_a_scale_case_scales_the_shape_about_its_centre_and_carries_the_handle_to_the_target():
    grown = shrunk = None
    for seed in range(30):
        case = make_case("scale", seed)
        moved = case.expected.shapes[-1]
        s = moved.half[0] / case.shape.half[0]
        assert 0.6 <= s <= 1.6 and moved.half[1] / case.shape.half[1] == pytest.approx(s)
        assert np.allclose(moved.ends()[1], case.target)
        assert np.allclose(np.subtract(case.target, case.center), s * np.subtract(case.handle, case.center))
        grown, shrunk = (case, shrunk) if s > 1 else (grown, case)
    assert grown is not None and shrunk is not None


@pytest.mark.integration  # worker processes, as `--jobs 2` runs
def test_two_jobs_give_the_same_json_as_one(tiny_model_dir, tmp_path):
    """One CPU thread in both, so the arithmetic is the same; only the times may differ."""
    import json

    import torch
    from PIL import Image

    from command.main import main
    from tests.conftest import FAST

    sets = [a for s in FAST for a in ("--set", s)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for jobs in (1, 2):
            assert main(["-q", "bench", "--model", str(tiny_model_dir), "--methods", "dragnext,warp",
                         "--n", "1", "--types", "translate,scale", "--jobs", str(jobs), *sets,
                         "--out", str(tmp_path / f"b{jobs}"), "--json", str(tmp_path / f"{jobs}.json")]) == 0
    finally:
        torch.set_num_threads(threads)

    def without_times(path):
        results = json.loads(path.read_text())
        for method in results["methods"].values():
            for row in [method["overall"], *method["by_type"].values(), *method["cases"]]:
                row.pop("seconds")
        return results

    one, two = without_times(tmp_path / "1.json"), without_times(tmp_path / "2.json")
    assert one == two and one["methods"]["dragnext"]["overall"]["n"] == 2
    grid = [np.asarray(Image.open(tmp_path / f"b{jobs}" / "grid.png")) for jobs in (1, 2)]
    assert np.array_equal(*grid)


def test_the_trace_shows_x0_after_every_pbsi_step_with_its_loss_terms(tiny_model_dir, tmp_path):
    import json

    from PIL import Image

    from bench import trace
    from tests.conftest import FAST

    out = tmp_path / "trace.png"
    trace.main(["deform-0004", "--model", str(tiny_model_dir), "--out", str(out),
                *[a for s in FAST for a in ("--set", s)], "--set", "pbsi.keep_weight=1"])
    steps = json.loads(out.with_suffix(".json").read_text())
    assert list(steps) == ["deform-0004"]
    assert [s["eta"] for s in steps["deform-0004"]] == [0.5, 1.0]  # pbsi.steps=2
    assert all(s["keep"] > 0 and s["region_features"] > 0 for s in steps["deform-0004"])
    sheet = Image.open(out)
    panel = 4 * 64 + 2
    assert sheet.size == ((3 + 2 + 1) * panel, panel)  # input, instruction, expected, 2 steps, edited


def test_a_method_that_does_not_parse_stops_the_bench_before_anything_runs(tmp_path, capsys):
    from command.main import main

    # without ';' the comma splits methods, so the second override reads as a method
    code = main(["-q", "bench", "--n", "1", "--out", str(tmp_path), "--model", str(tmp_path / "unused"),
                 "--methods", "dragnext:pbsi.keep_weight=1,pbsi.x0_reference=clean"])
    assert code == 2 and not (tmp_path / "manifest.parquet").exists()
    assert "method 'pbsi.x0_reference=clean'" in capsys.readouterr().err


def test_psnr_keep_is_paired_on_the_cases_both_methods_get_right():
    from bench.run import paired_keep, table

    def method(rows):
        return {"overall": {}, "by_type": {}, "cases": [
            {"case_id": f"c{i}", "success": ok, "psnr_keep": keep} for i, (ok, keep) in enumerate(rows)]}

    # the peer leaves the picture untouched where it fails, so its mean over every case is the higher
    methods = {"dragnext": method([(1, 40.0), (1, 42.0), (1, 41.0), (0, 30.0)]),
               "warp": method([(0, 50.0), (1, 39.0), (1, 40.0), (0, 50.0)]),
               "dragnext:pbsi.lr=1": method([(0, 0.0)] * 4)}
    pairs = paired_keep(methods)
    assert pairs == [{"methods": ["dragnext", "warp"], "n": 2, "dragnext": 41.5, "warp": 39.5}]
    printed = table({"methods": {}, "paired_keep": pairs})
    assert "psnr_keep where dragnext and warp both succeed (n = 2): 41.50 vs 39.50 dB" in printed
    assert paired_keep({"dragnext": methods["dragnext"]}) == []


def test_the_bench_puts_its_cases_in_bigger_pictures_with_scale(tiny_model_dir, tmp_path):
    """`--scale 2`: 128 px pictures with the 64 px cases' shapes; the crop edits a box of them."""
    import json

    from PIL import Image

    from command.main import main
    from tests.conftest import FAST

    sets = [a for s in FAST for a in ("--set", s)]
    assert main(["-q", "bench", "--model", str(tiny_model_dir), "--methods", "warp", "--n", "1",
                 "--types", "translate", "--scale", "2", "--out", str(tmp_path / "b"),
                 "--json", str(tmp_path / "r.json"), *sets]) == 0
    [case] = json.loads((tmp_path / "r.json").read_text())["methods"]["warp"]["cases"]
    assert case["case_id"] == "translate-0000.x2"
    [row] = read_table(str(tmp_path / "b" / "manifest.parquet")).to_pylist()
    assert Image.open(tmp_path / "b" / row["image_uri"]).size == (128, 128)
