"""`edit()` end to end on the tiny model, and the `dragnext edit` command."""

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from dragnext.attention import MutualSelfAttention
from dragnext.cli import main
from dragnext.config import build_config
from dragnext.edit import STAGES, edit
from tests.conftest import FAST, save_mask
from tests.scenes import dragnext_command, load_scene


def test_edit_returns_an_image_of_the_input_size_with_a_full_record(tiny_model, scene, fast_config):
    image, instruction = load_scene(*scene)
    weights_before = {k: v.clone() for k, v in tiny_model.unet.state_dict().items()}
    seen = []
    result = edit(image, instruction, tiny_model, fast_config, item_id="scene",
                  callback=lambda stage, done, total: seen.append(stage))
    assert result.image.size == (128, 96) and result.working_size == (48, 64)
    assert list(result.timings) == list(STAGES) and all(t >= 0 for t in result.timings.values())
    assert set(seen) == set(STAGES)
    record = result.to_record()
    assert record["config"] == fast_config.to_record() and record["lora"] == "trained"
    assert record["item"]["item_id"] == "scene" and len(record["item"]["drags"]) == 2
    assert record["device"] == "cpu" and record["peak_memory"]["mb"] > 0
    json.dumps(record)
    state = tiny_model.unet.state_dict()
    assert state.keys() == weights_before.keys()
    assert all((state[k] == v).all() for k, v in weights_before.items())
    assert not any(isinstance(p, MutualSelfAttention) for p in tiny_model.unet.attn_processors.values())
    assert np.asarray(result.image).std() > 1  # decoded content, not a flat fill


def test_stored_lora_weights_reproduce_the_edit_without_training(tiny_model, scene, fast_config):
    image, instruction = load_scene(*scene)
    first = edit(image, instruction, tiny_model, fast_config)
    again = edit(image, instruction, tiny_model, fast_config, lora_weights=first.lora_weights)
    assert again.lora_source == "provided" and again.timings["lora"] < first.timings["lora"]
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))


def test_pasting_the_background_keeps_the_input_outside_the_editable_mask(tiny_model, scene):
    folder, spec = scene
    editable = np.zeros((96, 128), dtype=bool)
    editable[20:62, 20:80] = True
    spec["editable_mask"] = save_mask(folder / "editable.png", editable)
    spec["drags"] = spec["drags"][:1]
    image, instruction = load_scene(folder, spec)
    whole = ["lora.enabled=false", "crop.enabled=false"]  # the whole picture: the crop keeps its outside too
    result = edit(image, instruction, tiny_model, build_config(overrides=FAST + whole))
    assert np.array_equal(np.asarray(result.image)[~editable], np.asarray(image)[~editable])  # by default
    assert result.to_record()["postprocess"] == ["paste_background"]
    assert result.weight is not None and not result.weight[~editable].any()  # the feather lies inside M
    off = edit(image, instruction, tiny_model,
               build_config(overrides=FAST + whole + ["output.paste_background=false"]))
    assert not np.array_equal(np.asarray(off.image)[~editable], np.asarray(image)[~editable])
    assert off.weight is None and off.to_record()["postprocess"] == []
    assert result.lora_source == "disabled"


def test_pasting_the_unswept_keeps_the_input_inside_m_away_from_the_drag(tiny_model, scene):
    folder, spec = scene
    spec["drags"] = spec["drags"][:1]
    image, instruction = load_scene(folder, spec)
    whole = ["lora.enabled=false", "crop.enabled=false"]  # the paste's geometry on the whole picture
    config = build_config(overrides=FAST + ["output.paste_unswept=true", *whole])
    result = edit(image, instruction, tiny_model, config)
    plain = edit(image, instruction, tiny_model, build_config(overrides=FAST + whole))
    [drag] = instruction.drags
    edited, original, unpasted = (np.asarray(i.image if hasattr(i, "image") else i).astype(int)
                                  for i in (result, image, plain))
    swept = drag.handle_mask.copy()  # a translate sweeps its handle region along h → g
    for f in np.linspace(0, 1, 9):
        dx, dy = (f * (g - h) for g, h in zip(drag.target, drag.handle, strict=True))
        swept |= np.roll(drag.handle_mask, (round(dy), round(dx)), axis=(0, 1))
    near = np.asarray(Image.fromarray(swept).filter(ImageFilter.MaxFilter(21)))
    far = ~near & result.item.editable  # inside M, away from the drag: the input's own pixels
    assert far.sum() > 100 and np.array_equal(edited[far], original[far])
    assert not np.array_equal(unpasted[far], original[far])  # without the paste, the model re-renders it
    assert np.array_equal(edited[swept], unpasted[swept])  # where the drag passes, the edit is kept
    assert result.to_record()["postprocess"] == ["paste_background", "paste_unswept"]


def test_pasting_the_path_keeps_only_where_the_object_starts_and_ends(tiny_model, scene):
    folder, spec = scene
    spec["drags"] = [spec["drags"][0] | {"target": [100, 44]}]  # a long translate: a path between
    image, instruction = load_scene(folder, spec)
    base = FAST + ["output.paste_unswept=true", "lora.enabled=false"]
    result = edit(image, instruction, tiny_model, build_config(overrides=base + ["output.paste_path=true"]))
    unswept = edit(image, instruction, tiny_model, build_config(overrides=base))
    [drag] = instruction.drags
    edited, original, kept = (np.asarray(i.image if hasattr(i, "image") else i).astype(int)
                              for i in (result, image, unswept))
    target = np.roll(drag.handle_mask, (4, 60), axis=(0, 1))
    settled = Image.fromarray(drag.handle_mask | target)
    near = np.asarray(settled.filter(ImageFilter.MaxFilter(17)))  # the margin and the feather's tail
    path = np.zeros_like(near)
    path[32:49, 40:100] = True
    path &= ~near  # between the disc's old and new places, clear of both
    assert path.sum() > 30 and np.array_equal(edited[path], original[path])
    assert not np.array_equal(kept[path], original[path])  # paste_unswept alone keeps the edit there
    inner = ~np.asarray(Image.fromarray(~target).filter(ImageFilter.MaxFilter(9)))
    assert inner.sum() > 50 and np.array_equal(edited[inner], kept[inner])  # where it ends: the edit
    assert result.to_record()["postprocess"] == ["paste_background", "paste_unswept", "paste_path"]


def test_the_edit_command_writes_the_image_and_its_record(tiny_model_dir, scene, tmp_path):
    folder, spec = scene
    (folder / "drag.json").write_text(json.dumps(spec))
    out = tmp_path / "out" / "edited.png"
    sets = [arg for key in FAST for arg in ("--set", key)]
    done = subprocess.run(
        dragnext_command() + ["edit", "--model", str(tiny_model_dir), "--image",
                              str(folder / "image.png"), "--instruction", str(folder / "drag.json"),
                              "--out", str(out), "--device", "cpu", *sets],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (128, 96)
    record = json.loads(out.with_suffix(".json").read_text())
    assert set(record["timings_s"]) == set(STAGES)
    assert record["config"]["lora"]["steps"] == 2 and record["item"]["item_id"] == "edited"
    assert record["inputs"]["instruction"].endswith("drag.json") and record["output"] == str(out)
    assert "pbsi" in done.stderr  # the progress bars name the stages


@pytest.fixture
def cli_scene(scene, tiny_model_dir, tmp_path):
    folder, spec = scene

    def run(change=None, image="image.png", sets=()):
        if change:
            change(folder, spec)
        (folder / "drag.json").write_text(json.dumps(spec))
        args = ["-q", "edit", "--model", str(tiny_model_dir), "--image", str(folder / image),
                "--instruction", str(folder / "drag.json"), "--out", str(tmp_path / "o.png")]
        for s in sets:
            args += ["--set", s]
        return main(args)

    return run


def wrong_size(folder, spec):
    spec["drags"][0]["handle_mask"] = save_mask(folder / "s.png", np.ones((10, 10), dtype=bool))


def empty(folder, spec):
    spec["drags"][0]["handle_mask"] = save_mask(folder / "e.png", np.zeros((96, 128), dtype=bool))


@pytest.mark.parametrize("change,image,sets,message", [
    (wrong_size, "image.png", (), "drags[0].handle_mask: mask is 10x10, image is 128x96"),
    (lambda f, s: s["drags"][1].pop("center"), "image.png", (), "drags[1].center: required"),
    (lambda f, s: s["drags"][0].update(target=[500, 3]), "image.png", (), "drags[0].target"),
    (empty, "image.png", (), "drags[0].handle_mask: mask is empty"),
    (None, "missing.png", (), "image: file"),
    (lambda f, s: s["drags"][0].update(handle_mask="gone.png"), "image.png", (),
     "drags[0].handle_mask: file"),
    (None, "image.png", ("lora.stepz=1",), "lora.stepz"),
    (lambda f, s: s["drags"][1].update(type="scale", target=[60, 70]), "image.png", (),
     "drags[1].target: the target is not on the handle's side of the centre"),
])
def test_bad_input_is_one_clear_error(cli_scene, capsys, change, image, sets, message):
    assert cli_scene(change, image, sets) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("dragnext: error:")


def test_malformed_json_exits_non_zero_without_a_traceback(scene, tmp_path):
    folder, _ = scene
    (folder / "drag.json").write_text('{"prompt": "x", "drags": [}')
    done = subprocess.run(
        dragnext_command() + ["edit", "--model", "/no/model", "--image", str(folder / "image.png"),
                              "--instruction", str(folder / "drag.json"), "--out",
                              str(tmp_path / "o.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "instruction: " in done.stderr and "not valid JSON (line 1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_edit_on_cuda(tiny_model_dir, scene, fast_config):
    from dragnext.model import load_model

    model = load_model(tiny_model_dir)
    result = edit(*load_scene(*scene), model, fast_config)
    record = result.to_record()
    assert record["device"].startswith("cuda") and record["dtype"] in ("float16", "bfloat16")
    assert record["peak_memory"]["kind"] == "cuda_max_allocated"
    assert result.image.size == (128, 96)


@pytest.mark.slow
def test_the_papers_defaults_run_end_to_end(tiny_model, scene):
    """Every default but the working size (LoRA 80 steps, T = 38 of 50, 6 × 10 PBSI)."""
    result = edit(*load_scene(*scene), tiny_model, build_config(overrides=["size=64"]))
    record = result.to_record()
    assert record["config"]["lora"]["steps"] == 80 and record["config"]["pbsi"]["iterations"] == 10
    assert result.image.size == (128, 96) and all(t > 0 for t in result.timings.values())


def test_a_scale_drag_edits_through_the_command(cli_scene, tmp_path):
    def scale_the_bar(folder, spec):  # the bar (x 80..109) grown 1.5x about its left end
        spec["drags"][1].update(type="scale", handle=[108, 70], target=[122, 70], center=[80, 70])

    assert cli_scene(scale_the_bar, sets=FAST) == 0
    assert Image.open(tmp_path / "o.png").size == (128, 96)
    drag = json.loads((tmp_path / "o.json").read_text())["item"]["drags"][1]
    assert drag["type"] == "scale" and drag["axis"] == "uniform" and drag["factors"] == [1.5, 1.5]


def test_pbsi_init_warp_starts_from_the_warped_inverted_latent(tiny_model, scene, fast_config, monkeypatch):
    import importlib

    from dragnext.peers.warp import warp_latent

    stages = importlib.import_module("dragnext.stages")
    seen = {}
    real = stages.pbsi

    def recording(trajectory, drags, *args, z_init=None, **kwargs):
        seen.update(z_T=trajectory[-1], drags=drags, z_init=z_init)
        return real(trajectory, drags, *args, z_init=z_init, **kwargs)

    monkeypatch.setattr(stages, "pbsi", recording)
    edit(*load_scene(*scene), tiny_model, fast_config)
    assert seen["z_init"] is None  # the paper's start: z_T itself
    config = build_config(fast_config.to_record(), ["pbsi.init=warp"])
    edit(*load_scene(*scene), tiny_model, config)
    assert torch.equal(seen["z_init"], warp_latent(seen["z_T"], seen["drags"][0], config.seed))
    assert not torch.equal(seen["z_init"], seen["z_T"])


@pytest.mark.parametrize("option", ["pbsi.loss=x0", "pbsi.vacate=fill", "features.blocks=all",
                                    "pbsi.eta_steps=1"])
def test_each_pbsi_option_changes_the_edit_through_the_real_unet(tiny_model, scene, fast_config, option):
    """Every option beyond the paper runs on a real UNet, is recorded, and changes the result."""
    paper_config = build_config(fast_config.to_record(), ["lora.enabled=false"])
    paper = edit(*load_scene(*scene), tiny_model, paper_config)
    changed = edit(*load_scene(*scene), tiny_model, build_config(paper_config.to_record(), [option]))
    key, value = option.split("=")
    section, name = key.split(".")
    assert str(changed.to_record()["config"][section][name]).lower() == value
    assert not np.array_equal(np.asarray(changed.image), np.asarray(paper.image))
