"""The fixture model's training code: seeded, resumable, and exported as a loadable model."""

import torch

from dragnext.model import load_model, model_preset
from fixture import checkpoint
from fixture.evaluate import evaluate
from fixture.export import PRESET, export
from fixture.train_unet import train as train_unet
from fixture.train_vae import train as train_vae


def vae_run(out, steps):
    train_vae(out, steps=steps, batch=2, lr=1e-3, kl=1e-6, seed=3, eval_every=1000, save_every=1)
    return checkpoint.load(out / "checkpoint.pt")["vae"]


def test_a_resumed_vae_run_equals_an_uninterrupted_one(tmp_path):
    vae_run(tmp_path / "a", 1)
    resumed = vae_run(tmp_path / "a", 2)
    straight = vae_run(tmp_path / "b", 2)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    log = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2 and '"step": 2' in log[1]


def test_the_exported_model_loads_through_load_model(tmp_path):
    vae_run(tmp_path / "vae", 1)
    train_unet(tmp_path / "vae" / "checkpoint.pt", tmp_path / "unet", steps=1, batch=2, lr=1e-4,
               seed=0, save_every=1)
    out = export(tmp_path / "vae" / "checkpoint.pt", tmp_path / "unet" / "checkpoint.pt",
                 tmp_path / "model")
    model = load_model(out, device="cpu")
    assert model.architecture.vae_factor == 4 and model.size_multiple == 32
    assert model.embed_prompt("a red disc").hidden.shape == (1, 77, 64)
    assert model_preset(out) == PRESET
    weights = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    assert weights < 25 * 2**20  # the size budget for the committed model

    report = evaluate(model, 2, tmp_path / "eval")
    assert {"vae_psnr", "vae_colour_error", "inversion_psnr"} <= set(report)
    assert (tmp_path / "eval" / "samples.png").exists()
    assert (tmp_path / "eval" / "reconstruction.png").exists()
