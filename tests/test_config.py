import json

import pytest

from dragnext.config import ConfigError, EditConfig, build_config, read_config_file


def test_defaults_are_the_papers():
    c = EditConfig().to_record()
    assert c == {
        "size": None, "seed": 0, "method": "dragnext",
        "lora": {"enabled": True, "rank": 16, "steps": 80, "lr": 5e-4, "batch_size": 4, "views": 8},
        "inversion": {"num_steps": 50, "strength": 0.75},
        "pbsi": {"steps": 6, "iterations": 10, "lr": 0.02, "lam": 0.1, "progressive": True,
                 "eta_steps": None, "loss": "features", "x0_weight": 1.0, "init": "inverted",
                 "vacate": "keep", "vacate_weight": 1.0, "x0_reference": "predicted", "keep_weight": 0.0,
                 "keep_path": False},
        "dragdiffusion": {"iterations": 80, "lr": 0.01, "lam": 0.1, "r_m": 1, "r_p": 3,
                          "reached_px": 2.0},
        "features": {"blocks": None},
        "attention": {"mutual": True, "start_layer": None},
        # nothing outside M changes, for every model; the file as the input's (dragnext.photo_file)
        "output": {"paste_background": True, "paste_unswept": False, "paste_path": False,
                   "paste_moved": False, "format": "png", "quality": 95, "strip_metadata": False},
        "crop": {"enabled": True, "margin": 0.25},  # a big photo is edited where its drags are
        "review": {"min_drag_gap": -0.1685, "min_if_ed": 0.9229, "max_target_err": 8.303,
                   "max_vacated_residual": 0.0775},  # tuned: docs/review-thresholds.json
        "runtime": {"batch_size": None, "compile": "off"},
    }
    assert EditConfig().inversion.start_step == 38  # T = round(50 * 0.75)
    assert EditConfig().inversion.start_step - EditConfig().pbsi.steps + 1 == 33  # T'
    assert EditConfig().edit_step == 32 and EditConfig(method="warp").edit_step == 38


def test_the_model_dependent_defaults_resolve_to_the_papers_on_sd15_and_by_rule_on_sdxl():
    from dragnext.architecture import describe
    from tests.test_architecture import configs

    sd15 = describe(*configs("sd15"), text_encoders=1)
    sdxl = describe(*configs("sdxl"), text_encoders=2)
    c = EditConfig()
    assert (c.working_side(sd15), c.feature_blocks(sd15), sd15.mutual_start_layer) == (512, [2], 10)
    assert (c.working_side(sdxl), c.feature_blocks(sdxl), sdxl.mutual_start_layer) == (1024, [1], 64)
    assert build_config(overrides=["features.blocks=all", "size=768"]).feature_blocks(sdxl) == [0, 1, 2]
    assert build_config(overrides=["size=768"]).working_side(sdxl) == 768
    with pytest.raises(ConfigError, match="up_blocks are 0-2"):
        build_config(overrides=["features.blocks=[3]"]).check_model(sdxl)
    with pytest.raises(ConfigError, match="70 self-attention layers"):
        build_config(overrides=["attention.start_layer=70"]).check_model(sdxl)


def test_overrides_are_typed_and_nested():
    c = build_config(overrides=["lora.steps=2", "pbsi.progressive=false", "features.blocks=[1,2]",
                                "attention.start_layer=10", "pbsi.lr=0.05"])
    assert c.lora.steps == 2 and c.pbsi.progressive is False
    assert c.features.blocks == [1, 2] and c.attention.start_layer == 10 and c.pbsi.lr == 0.05


def test_a_file_then_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"size": 256, "lora": {"enabled": False}}))
    c = build_config(read_config_file(path), ["size=128"])
    assert c.size == 128 and c.lora.enabled is False and c.lora.steps == 80


@pytest.mark.parametrize("override,named", [
    ("lora.stepz=2", "lora.stepz"),
    ("lora.steps=many", "lora.steps"),
    ("method=magic", "method"),
    ("pbsi.steps=40", "pbsi"),
    ("size", "size"),
    ("size.x=1", "size"),
])
def test_bad_overrides_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        build_config(overrides=[override])


def test_a_bad_config_file_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{size: 1")
    with pytest.raises(ConfigError, match="c.json"):
        read_config_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "missing.json")


def test_a_model_preset_sits_between_the_defaults_and_the_users_keys(tmp_path):
    from dragnext.model import model_preset

    (tmp_path / "dragnext.json").write_text(json.dumps({"size": 64, "pbsi.iterations": 20}))
    preset = model_preset(tmp_path)
    c = build_config({"pbsi": {"iterations": 5}}, ["lora.steps=3"], preset=preset)
    assert c.size == 64 and c.pbsi.iterations == 5 and c.lora.steps == 3 and c.pbsi.steps == 6
    assert build_config(preset=preset).pbsi.iterations == 20
    assert model_preset(tmp_path / "none") == {} and model_preset("org/hub-model") == {}


def test_a_preset_eta_schedule_composes_with_fewer_pbsi_steps():
    preset = {"pbsi": {"eta_steps": 4}}  # the fixture's: η reaches 1 two steps before the end
    assert build_config(overrides=["pbsi.steps=2"], preset=preset).pbsi.eta_steps == 4
