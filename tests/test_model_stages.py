"""The stages that touch the UNet: LoRA, mutual attention, feature hooks, loading."""

import subprocess
import sys

import pytest
import torch

from dragnext.attention import (
    MutualSelfAttention,
    mutual_self_attention,
    self_attention_layers,
)
from dragnext.config import LoraConfig
from dragnext.features import feature_hooks
from dragnext.lora import lora_applied, train_lora
from dragnext.model import ModelNotFoundError, load_model


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_the_tiny_model_loads_offline_through_load_model(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    assert model.architecture.vae_factor == 2 and model.size_multiple == 16
    assert len(self_attention_layers(model.unet)) == 10 and model.architecture.mutual_start_layer == 6
    assert model.embed_prompt("a dog").hidden.shape == (1, 77, 32)


@pytest.mark.parametrize("spec", ["/no/such/folder", "./missing", "nobody/no-such-model"])
def test_a_missing_model_says_how_to_provide_one(spec):
    with pytest.raises(ModelNotFoundError) as caught:
        load_model(spec, device="cpu")
    message = str(caught.value)
    assert spec in message and "HF_HOME" in message and "local folder" in message
    assert "Traceback" not in message and len(message.splitlines()) < 10


def test_lora_training_depends_on_its_seed_alone(tiny_model):
    """Not on the global RNG, which whatever ran before in the process has moved."""
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    context = tiny_model.embed_prompt("a photo")
    config = LoraConfig(steps=2, rank=4, lr=1e-2)
    [first] = train_lora(tiny_model, x, context, config, seed=3)
    torch.randn(1000)
    [second] = train_lora(tiny_model, x, context, config, seed=3)
    assert all(torch.equal(first[k], second[k]) for k in first)
    [other] = train_lora(tiny_model, x, context, config, seed=4)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_lora_trains_then_leaves_every_base_weight_bit_identical(tiny_model):
    before = snapshot(tiny_model.unet)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    context = tiny_model.embed_prompt("a photo")
    [weights] = train_lora(tiny_model, x, context, LoraConfig(steps=3, rank=4, lr=1e-2), seed=0)
    after = snapshot(tiny_model.unet)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m).__module__.startswith(("diffusers", "torch")) for m in tiny_model.unet.modules())
    assert weights and all(".lora_" in k for k in weights)
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # it learned

    z = torch.randn(1, 4, 16, 16)
    plain = tiny_model.predict_noise(z, 500, context)
    with lora_applied(tiny_model, [weights]):
        adapted = tiny_model.predict_noise(z, 500, context)
    assert not torch.allclose(plain, adapted)
    assert torch.equal(tiny_model.predict_noise(z, 500, context), plain)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.unet.state_dict().items())


def test_mutual_attention_reads_the_reference_and_is_restored(tiny_model):
    unet, context = tiny_model.unet, tiny_model.embed_prompt("")
    original = dict(unet.attn_processors)
    z_ref, z_edit = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    plain = tiny_model.predict_noise(torch.cat([z_ref, z_edit]), 300, context)
    start = tiny_model.architecture.mutual_start_layer
    with mutual_self_attention(unet, start) as layers:  # up_blocks[-2:], two transformer layers each
        assert [n.split(".")[:2] for n in layers] == [["up_blocks", "2"]] * 2 + [["up_blocks", "3"]] * 2
        same = tiny_model.predict_noise(torch.cat([z_ref, z_ref]), 300, context)
        mutual = tiny_model.predict_noise(torch.cat([z_ref, z_edit]), 300, context)
    # identical branches: mutual attention is plain self-attention
    assert torch.allclose(same[0], same[1], atol=1e-5)
    assert torch.allclose(same[0], plain[0], atol=1e-5)
    assert torch.allclose(mutual[0], plain[0], atol=1e-5)  # the reference is untouched
    assert not torch.allclose(mutual[1], plain[1], atol=1e-3)  # the edit reads the reference
    assert unet.attn_processors == original
    assert not any(isinstance(p, MutualSelfAttention) for p in unet.attn_processors.values())


def test_attention_processors_are_restored_when_the_block_raises(tiny_model):
    original = dict(tiny_model.unet.attn_processors)
    with pytest.raises(RuntimeError), mutual_self_attention(tiny_model.unet, 0):
        raise RuntimeError("boom")
    assert tiny_model.unet.attn_processors == original
    with pytest.raises(ValueError, match="10 self-attention layers"), \
            mutual_self_attention(tiny_model.unet, 10):
        pass


def test_feature_hooks_capture_the_configured_blocks_at_the_requested_size(tiny_model):
    context = tiny_model.embed_prompt("")
    channels = [tiny_model.unet.up_blocks[j].resnets[-1].out_channels for j in (1, 2)]
    with feature_hooks(tiny_model.unet, [1, 2], (12, 16)) as hooks:
        tiny_model.predict_noise(torch.randn(2, 4, 24, 32), 300, context)
        features = hooks.pop()
    assert features.shape == (2, sum(channels), 12, 16)
    assert features.at(torch.zeros(1, 2)).shape == (2, sum(channels), 1)
    assert features.at(torch.zeros(1, 2)).dtype == torch.float32
    assert not any(b._forward_hooks for b in tiny_model.unet.up_blocks)
    with feature_hooks(tiny_model.unet, [0, 1, 2, 3], (12, 16)) as hooks:  # the paper's: every stage
        tiny_model.predict_noise(torch.randn(1, 4, 24, 32), 300, context)
        every = hooks.pop()
    assert every.shape[1] == sum(b.resnets[-1].out_channels for b in tiny_model.unet.up_blocks)
    with pytest.raises(ValueError, match="features.blocks"):
        feature_hooks(tiny_model.unet, [7], (4, 4)).__enter__()


def test_the_tiny_model_command_writes_a_loadable_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dragnext.cli", "-q", "tiny-model",
                           str(tmp_path / "m")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"}
    load_model(tmp_path / "m", device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_unet_on_cuda_with_fp32_latents(tiny_model_dir):
    model = load_model(tiny_model_dir)
    assert model.device.type == "cuda" and model.dtype in (torch.float16, torch.bfloat16)
    z = torch.randn(1, 4, 16, 16, device="cuda", requires_grad=True)
    eps = model.predict_noise(z, 500, model.embed_prompt("x"))
    assert eps.dtype == torch.float32
    eps.sum().backward()
    assert z.grad is not None and z.grad.dtype == torch.float32
