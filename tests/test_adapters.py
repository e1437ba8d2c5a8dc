"""The per-item LoRA inside the projections (`dragnext.adapters`) against the per-sample
forward hook it replaced, and what it costs: aten ops per UNet pass, host-device
synchronisations per training step, VAE encodes per LoRA run."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch

import dragnext.lora
from bench.op_counts import count_pass, per_sample_hook, random_weights
from dragnext.adapters import Adapters
from dragnext.attention import mutual_self_attention
from dragnext.conditioning import Conditioning
from dragnext.config import LoraConfig, build_config
from dragnext.device_traffic import DeviceTraffic, on_meta
from dragnext.edit import edit_batch
from dragnext.lora import lora_applied, train_lora
from dragnext.tiny_model import in_memory_model
from tests.conftest import FAST
from tests.scenes import batch_items

# fp32 on the CPU: (W + BA)x and Wx + B(Ax) sum in another order, nothing more.
OUTPUT_TOLERANCE = 1e-5
PIXEL_TOLERANCE = 2  # grey levels (of 255), any pixel, after a whole edit


def contexts(model, count: int) -> Conditioning:
    return Conditioning.cat([model.embed_prompt(p) for p in ("a cup", "a dog", "a hat", "a tree")[:count]])


@pytest.mark.parametrize("count,copies,mutual", [(1, 1, False), (4, 1, False), (1, 2, True), (4, 2, True)],
                         ids=["one-item", "batch-of-4", "one-pair-mutual", "4-pairs-mutual"])
def test_folded_and_grouped_adapters_equal_the_per_sample_hook(tiny_model, count, copies, mutual):
    weights = random_weights(tiny_model.unet, count)
    cond = contexts(tiny_model, count)
    z = torch.randn(count * copies, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(600)
    with mutual_self_attention(tiny_model.unet, 0) if mutual else nullcontext():
        plain = tiny_model.unet_output(z, t, cond)
        with per_sample_hook(tiny_model.unet, Adapters.stack(weights, tiny_model.device)):
            expected = tiny_model.unet_output(z, t, cond)
        with lora_applied(tiny_model, weights):
            got = tiny_model.unet_output(z, t, cond)
    assert (expected - plain).abs().max() > 100 * OUTPUT_TOLERANCE  # the adapters matter
    assert (got - expected).abs().max() <= OUTPUT_TOLERANCE


def test_an_edit_equals_the_per_sample_hook_for_every_drag_type_lora_trained_and_provided(
        tiny_model, scene, monkeypatch):
    """A batch of four items, one of each drag type, edited with the adapters in the
    projections and again with the hook doing their work (training too)."""
    config = build_config(overrides=[*FAST, "lora.enabled=true", "runtime.batch_size=4"])
    items = batch_items(scene)[:4]
    given = random_weights(tiny_model.unet, 4, rank=16, up=0.01)  # a trained adapter's size: PBSI
    trained = edit_batch(items, tiny_model, config)                 # amplifies a rounding in a wild one
    provided = edit_batch(items, tiny_model, config, lora_weights=given)
    monkeypatch.setattr(dragnext.lora, "training", per_sample_hook)
    monkeypatch.setattr(dragnext.lora, "folded", per_sample_hook)
    trained_hook = edit_batch(items, tiny_model, config)
    provided_hook = edit_batch(items, tiny_model, config, lora_weights=given)
    for ours, hook in [*zip(trained, trained_hook, strict=True), *zip(provided, provided_hook, strict=True)]:
        assert ours.batch["size"] == 4
        difference = np.abs(np.asarray(ours.image, np.int16) - np.asarray(hook.image, np.int16)).max()
        assert difference <= PIXEL_TOLERANCE, ours.item.item_id
    for ours, hook in zip(trained, trained_hook, strict=True):
        assert ours.lora_source == "trained"
        assert all(torch.allclose(ours.lora_weights[k], hook.lora_weights[k], atol=OUTPUT_TOLERANCE)
                   for k in ours.lora_weights)
    assert {r.item.item_id for r in provided} == {i.item_id for i in items}
    assert all(r.lora_source == "provided" for r in provided)


@pytest.fixture(scope="module")
def meta_model():
    return on_meta(in_memory_model("sd15", "cpu", torch.float32, full_size=False))


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_a_folded_adapter_adds_no_op_and_grouped_ones_at_most_a_tenth(meta_model, backward):
    def ops(items: int, weights) -> dict:
        counted = count_pass(meta_model, items, items, lora_applied(meta_model, weights), backward, 16)
        assert counted["syncs"] == counted["uploads"] == 0
        return counted

    assert ops(1, random_weights(meta_model.unet, 1)) == ops(1, None)
    plain, grouped = ops(4, None), ops(4, random_weights(meta_model.unet, 4))
    assert grouped["forward"] <= 1.1 * plain["forward"] and grouped["backward"] <= 1.1 * plain["backward"]
    hook = count_pass(meta_model, 4, 4, per_sample_hook(meta_model.unet, Adapters.stack(
        random_weights(meta_model.unet, 4), meta_model.device)), backward, 16)
    assert hook["forward"] > 1.5 * plain["forward"]  # what the hook cost: the counter sees it


def test_a_lora_step_never_waits_for_the_device(meta_model, monkeypatch):
    """Host syncs and uploads of a whole LoRA run on meta tensors standing for the GPU: the
    uploads come before the first step, the syncs after the last (reading the weights)."""
    steps = 4
    assert steps <= dragnext.lora.DRAW_STEPS

    class Unfused(torch.optim.AdamW):  # the fused kernel has no meta implementation
        def __init__(self, params, lr, fused):
            assert fused
            super().__init__(params, lr=lr)

    monkeypatch.setattr(dragnext.lora.torch.optim, "AdamW", Unfused)
    x = torch.rand(2, 3, 64, 64, device="meta") * 2 - 1
    traffic = DeviceTraffic()
    with traffic:
        train_lora(meta_model, x, contexts(meta_model, 2), LoraConfig(steps=steps, rank=4), seed=0,
                   on_step=lambda step: traffic.mark(f"after step {step}"))
    assert traffic.uploads and set(traffic.uploads) == {"start"}  # the prompt, ᾱ, the draws
    assert set(traffic.syncs) == {f"after step {steps}"}, traffic.sync_ops[:5]  # the weights, read back
    step_ops = [traffic.ops[f"after step {s}"] for s in range(1, steps - 1)]
    assert len(set(step_ops)) == 1  # every step dispatches the same ops: no data-dependent path


def test_the_vae_encodes_each_image_once_per_view(tiny_model, monkeypatch):
    encoded = []
    real = tiny_model.encode
    monkeypatch.setattr(tiny_model, "encode", lambda x: encoded.append(x.shape[0]) or real(x))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    config = LoraConfig(steps=12, rank=4, views=5)
    train_lora(tiny_model, x, contexts(tiny_model, 3), config, seed=0)
    assert sum(encoded) == 3 * config.views  # not steps × batch_size = 48 per item


def test_half_precision_adapters_train_and_apply_in_the_unets_dtype(tiny_model_dir, tiny_model, scene):
    """The GPU's path on the CPU: a bf16 UNet trains fp32 adapters through bf16 shrinks and
    expands, and edits with strong adapters folded (one item) and grouped (two) as the fp32
    model does, up to rounding: far closer to it than to the edit without them."""
    from dragnext.model import load_model

    half = load_model(tiny_model_dir, device="cpu", dtype=torch.bfloat16)
    on = build_config(overrides=[*FAST, "lora.enabled=true", "runtime.batch_size=2"])
    items = batch_items(scene)[:2]
    for result in edit_batch(items, half, on):
        assert result.to_record()["dtype"] == "bfloat16" and result.lora_source == "trained"
        assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in result.lora_weights.values())
        assert any(w.abs().sum() > 0 for k, w in result.lora_weights.items() if "lora_B" in k)  # it learned

    def mean_difference(a, b) -> float:
        return float(np.abs(np.asarray(a.image, np.float32) - np.asarray(b.image, np.float32)).mean())

    strong = random_weights(tiny_model.unet, 2, up=0.2)
    without = edit_batch(items, tiny_model, build_config(overrides=[*FAST, "lora.enabled=false"]))
    for batch in (1, 2):
        ours = edit_batch(items[:batch], half, on, lora_weights=strong[:batch])
        fp32 = edit_batch(items[:batch], tiny_model, on, lora_weights=strong[:batch])
        for b in range(batch):  # measured: about 1.2 grey levels from fp32, 6 from no adapter
            assert mean_difference(ours[b], fp32[b]) < mean_difference(fp32[b], without[b]) / 3


@pytest.mark.parametrize("count", [1, 2])
def test_the_unet_is_restored_when_a_block_with_adapters_raises(tiny_model, count):
    unet = tiny_model.unet
    modules = dict(unet.named_modules())
    parameters = {n: (p, p.detach().clone()) for n, p in unet.named_parameters()}
    weights = random_weights(unet, count)
    for block in (lambda: lora_applied(tiny_model, weights),
                  lambda: dragnext.lora.training(unet, Adapters.stack(weights, tiny_model.device))):
        with pytest.raises(KeyboardInterrupt), mutual_self_attention(unet, 0), block():
            swapped = dict(unet.named_parameters())
            assert dict(unet.named_modules()) != modules or any(
                swapped.get(n) is not p for n, (p, _) in parameters.items())
            raise KeyboardInterrupt
        assert dict(unet.named_modules()) == modules
        assert all(p is parameters[n][0] and torch.equal(p, parameters[n][1])
                   for n, p in unet.named_parameters())
