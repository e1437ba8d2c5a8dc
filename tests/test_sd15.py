"""`dragnext tiny-model --arch sd15 --full-size`: SD1.5's exact architecture with random weights."""

import pytest
import torch

from dragnext.tiny_model import CLIP_VOCAB, components

# Parameter counts of stable-diffusion-v1-5's unet, text_encoder and vae folders.
SD15_PARAMETERS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}


def test_the_sd15_components_have_sd15s_exact_sizes():
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        parts = components("sd15", full_size=True)
    for name, count in SD15_PARAMETERS.items():
        assert sum(p.numel() for p in parts[name].parameters()) == count, name
    tokenizer = parts["tokenizer"]
    assert len(tokenizer) == CLIP_VOCAB
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    assert tokenizer("a red cup").input_ids[0] == 49406


@pytest.mark.slow
def test_the_sd15_folder_builds_loads_and_runs_one_forward(tmp_path):
    from command.main import main
    from dragnext.model import load_model

    assert main(["-q", "tiny-model", str(tmp_path / "sd15"), "--arch", "sd15", "--full-size"]) == 0
    model = load_model(tmp_path / "sd15", device="cpu")
    assert sum(p.numel() for p in model.unet.parameters()) == SD15_PARAMETERS["unet"]
    with torch.no_grad():
        z_0 = model.encode(torch.zeros(1, 3, 64, 64))
        eps = model.predict_noise(z_0, 500, model.embed_prompt("a red cup"))
    assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()
