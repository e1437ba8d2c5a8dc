"""The architecture description, from the real configs of each family (tests/model_configs:
stable-diffusion-v1-5, stable-diffusion-2-1-base, stable-diffusion-2-1, stable-diffusion-xl-base-1.0),
checked against the UNet diffusers builds from them on the meta device (no weights)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from dragnext.architecture import UnsupportedModelError, describe, read_architecture
from dragnext.attention import self_attention_layers

CONFIGS = Path(__file__).parent / "model_configs"

EXPECTED = {  # family, prediction, VAE scale, native px, F block, F channels, layers, mutual start
    "sd15": ("sd1", "epsilon", 0.18215, 512, 2, 640, 16, 10),
    "sd21": ("sd2", "epsilon", 0.18215, 512, 2, 640, 16, 10),
    "sd21-v": ("sd2", "v_prediction", 0.18215, 768, 2, 640, 16, 10),
    "sdxl": ("sdxl", "epsilon", 0.13025, 1024, 1, 640, 70, 64),
}


def configs(family: str) -> tuple[dict, dict, dict]:
    return tuple(json.loads((CONFIGS / family / f"{part}.json").read_text())
                 for part in ("unet", "vae", "scheduler"))


@pytest.mark.parametrize("family", EXPECTED)
def test_the_description_of_each_family_from_its_real_configs(family):
    unet_config, vae_config, scheduler_config = configs(family)
    arch = describe(unet_config, vae_config, scheduler_config, text_encoders=2 if family == "sdxl" else 1)
    assert (arch.family, arch.prediction_type, arch.vae_scaling, arch.native_size, arch.feature_block,
            arch.feature_channels, arch.self_attention_layers, arch.mutual_start_layer) == EXPECTED[family]
    assert arch.added_time_ids == (family == "sdxl") and arch.vae_factor == 8

    with torch.device("meta"):  # the UNet diffusers builds from the same config: shapes only
        unet = UNet2DConditionModel.from_config(unet_config)
    layers = self_attention_layers(unet)
    assert len(layers) == arch.self_attention_layers
    mutual = layers[arch.mutual_start_layer:]
    first_of_stage = f"up_blocks.{arch.up_blocks - 2}."
    assert mutual[0].startswith(first_of_stage) and not layers[arch.mutual_start_layer - 1].startswith(
        first_of_stage)  # the first layer of up_blocks[-2] …
    assert all(n.startswith((f"up_blocks.{arch.up_blocks - 2}.", f"up_blocks.{arch.up_blocks - 1}."))
               for n in mutual)  # … through the end: the last two decoder stages
    block = unet.up_blocks[arch.feature_block]
    assert block.resnets[-1].out_channels == arch.feature_channels
    # F is the last stage that upsamples: its output is at latent resolution
    assert block.upsamplers is not None and unet.up_blocks[-1].upsamplers is None


def test_sdxl_mutual_attention_covers_up_blocks_1_only():
    """SDXL's last decoder stage has no attention: the rule gives the 6 layers of up_blocks[1]."""
    unet_config, vae_config, scheduler_config = configs("sdxl")
    arch = describe(unet_config, vae_config, scheduler_config, text_encoders=2)
    assert list(arch.mutual_layers) == list(range(64, 70))


def unsupported(change: dict, encoders: int = 1, scheduler: dict | None = None) -> str:
    unet_config, vae_config, scheduler_config = configs("sd15")
    with pytest.raises(UnsupportedModelError) as caught:
        describe({**unet_config, **change}, vae_config, {**scheduler_config, **(scheduler or {})}, encoders)
    return str(caught.value)


def test_unsupported_families_name_what_was_found():
    assert "9 input" in unsupported({"in_channels": 9})  # inpainting
    assert "class_embed_type" in unsupported({"class_embed_type": "timestep", "in_channels": 4})
    assert "refiner" in unsupported({"addition_embed_type": "text_time"}, encoders=1)
    assert "addition_embed_type='image'" in unsupported({"addition_embed_type": "image"})
    assert "prediction_type='sample'" in unsupported({}, scheduler={"prediction_type": "sample"})
    assert "Supported: SD1.x, SD2.x" in unsupported({"_class_name": "UNetSpatioTemporalConditionModel"})


def test_a_transformer_model_folder_is_refused_by_the_edit_command(tmp_path):
    folder = tmp_path / "sd3"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(UnsupportedModelError, match="StableDiffusion3Pipeline"):
        read_architecture(folder)
    image, instruction = tmp_path / "in.png", tmp_path / "in.json"
    from PIL import Image
    Image.new("RGB", (64, 64), "white").save(image)
    mask = tmp_path / "m.png"
    handle = Image.new("L", (64, 64), 0)
    handle.paste(255, (5, 5, 16, 16))
    handle.save(mask)
    instruction.write_text(json.dumps({"drags": [{"type": "translate", "handle_mask": str(mask),
                                                  "handle": [10, 10], "target": [20, 20]}]}))
    done = subprocess.run([sys.executable, "-m", "command", "-q", "edit", "--model", str(folder), "--image",
                           str(image), "--instruction", str(instruction), "--out", str(tmp_path / "o.png")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unsupported model" in done.stderr and "StableDiffusion3Pipeline" in done.stderr
