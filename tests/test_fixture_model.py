"""The committed fixture model: it loads offline like any hub model, and it really edits."""

import json
import os
import subprocess

import numpy as np
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors import safe_open

from bench.cases import make_case
from dragnext.metrics import colour_mask, score_drag
from dragnext.model import load_model, model_preset
from fixture import FIXTURE_MODEL as FIXTURE
from fixture.export import PRESET
from tests.scenes import CASE_SEED, dragnext_command, write_case


def test_the_fixture_model_is_sd_shaped_fp16_within_budget_and_loads_through_load_model():
    files = sorted(FIXTURE.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    for file in files:
        with safe_open(file, "pt") as weights:
            assert all(weights.get_slice(k).get_dtype() == "F16" for k in weights.keys())
    model = load_model(str(FIXTURE), device="cpu")
    assert isinstance(model.unet, UNet2DConditionModel)
    assert model.unet.config.cross_attention_dim == model.embed_prompt("a red disc").hidden.shape[-1]
    assert model_preset(FIXTURE) == PRESET  # the committed preset is the one export writes



def test_a_benchmark_translate_runs_offline_through_dragnext_edit_and_lands_on_target(tmp_path):
    case = make_case("translate", CASE_SEED)
    image, instruction = write_case(case, tmp_path)
    out = tmp_path / "edited.png"
    done = subprocess.run(
        dragnext_command() + ["-q", "edit", "--model", str(FIXTURE), "--image", str(image),
                              "--instruction", str(instruction), "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 0, done.stderr
    assert json.loads(out.with_suffix(".json").read_text())["config"]["size"] == 64  # the preset
    original, expected = case.object_masks()
    before = score_drag(colour_mask(case.scene.render(), case.colour), expected, original)
    after = score_drag(colour_mask(np.asarray(Image.open(out)), case.colour), expected, original)
    assert not before.success and after.success, (before, after)


def test_the_fixture_vae_alone_keeps_the_benchmarks_neighbours():
    """The neighbour check (IoU ≥ 0.8) is fair: encoding and decoding a scene, with no edit,
    keeps nearly every neighbour, so a broken one means the edit broke it."""
    from bench.generate import cases
    from dragnext.metrics import iou
    from dragnext.resize import image_to_tensor, tensor_to_image

    model = load_model(str(FIXTURE), device="cpu")
    kept = []
    for case in cases(30, seed=0):
        image = Image.fromarray(case.scene.render())
        z_0 = model.encode(image_to_tensor(image, (64, 64)))
        again = np.asarray(tensor_to_image(model.decode(z_0), 64, 64))
        kept += [iou(colour_mask(again, c), colour_mask(np.asarray(image), c)) >= 0.8
                 for c in case.neighbour_colours]
    assert len(kept) > 120 and np.mean(kept) >= 0.95


def test_the_oracle_is_the_expected_image_through_the_vae_and_the_presets_paste():
    """The ceiling row: nearly every expected image passes the strict rule through the
    fixture's VAE, and what the preset pastes back is the input's own pixels."""
    from bench import oracle, run
    from bench.generate import cases
    from dragnext.config import build_config
    from dragnext.stages import edited_region, prepare

    model = load_model(str(FIXTURE), device="cpu")
    config = build_config(preset=model_preset(FIXTURE))
    assert config.output.paste_unswept and config.output.paste_path
    strict = []
    for case in cases(3, seed=0):
        item = run.item_of(case)
        image = oracle.oracle_image(model, item, Image.fromarray(case.expected.render()), config)
        scores = run.score(case, item, image, 0.0)
        strict.append(scores["success_strict"])
        [prepared] = prepare(oracle.Batch([item], model, config, lambda *a: None), [])
        outside = ~edited_region(prepared, config.output).numpy()  # the feather lies inside
        assert np.array_equal(np.asarray(image)[outside], case.scene.render()[outside])
    assert np.mean(strict) >= 0.75
