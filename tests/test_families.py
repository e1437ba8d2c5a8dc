"""Each family's tiny model through `dragnext edit` with each drag type; UNet passes per
family against the cost model; `--vae` and a style `--lora` (diffusers and kohya formats)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cases import TYPES, make_case
from command.main import main
from dragnext.config import build_config
from dragnext.cost import unet_passes
from dragnext.model import load_model
from dragnext.model_source import ModelSource
from dragnext.tiny_model import ARCHS, components, save_components, save_tiny_model
from tests.scenes import write_case

FAST = ["lora.steps=2", "inversion.num_steps=10", "pbsi.steps=2", "pbsi.iterations=2", "size=64"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {arch: save_tiny_model(root / arch, arch=arch) for arch in ARCHS}


def edit(model: Path, case_dir: Path, out: Path, *extra: str) -> dict:
    args = ["-q", "edit", "--model", str(model), "--image", str(case_dir / "image.png"),
            "--instruction", str(case_dir / "drag.json"), "--out", str(out), *extra]
    for key in FAST:
        args += ["--set", key]
    assert main(args) == 0
    return json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cases")
    out = {}
    for kind in TYPES:
        (root / kind).mkdir()
        write_case(make_case(kind, seed=1), root / kind)
        out[kind] = root / kind
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_each_family_edits_each_drag_type_through_the_command(arch, family_dirs, cases, tmp_path):
    expected = unet_passes(build_config(overrides=FAST))
    for kind, case_dir in cases.items():
        record = edit(family_dirs[arch], case_dir, tmp_path / f"{kind}.png")
        edited = np.asarray(Image.open(tmp_path / f"{kind}.png"))
        assert edited.shape == (64, 64, 3) and edited.std() > 1
        architecture = record["model"]["architecture"]
        assert architecture["family"] == {"sd15": "sd1", "sd21": "sd2", "sd21-v": "sd2", "sdxl": "sdxl"}[arch]
        assert architecture["prediction_type"] == ("v_prediction" if arch == "sd21-v" else "epsilon")
        by_stage = record["unet_passes"]["by_stage"]
        assert {s: {k: p[k] for k in ("forward", "backward")} for s, p in by_stage.items()} == expected


def test_the_sdxl_tiny_model_is_conditioned_on_both_encoders_and_the_time_ids(family_dirs):
    model = load_model(family_dirs["sdxl"], device="cpu")
    assert model.architecture.added_time_ids and len(model.text_encoders) == 2
    cond = model.embed_prompt("a red disc", (64, 48))
    widths = [e.config.hidden_size for e in model.text_encoders]
    assert cond.hidden.shape == (1, 77, sum(widths)) == (1, 77, model.unet.config.cross_attention_dim)
    assert cond.pooled.shape == (1, model.text_encoders[1].config.projection_dim)
    assert cond.time_ids.tolist() == [[64, 48, 0, 0, 64, 48]]
    z = torch.randn(1, 4, 32, 24)
    other = model.embed_prompt("a red disc", (128, 96))  # another size changes only the time ids
    assert torch.equal(other.hidden, cond.hidden)
    assert not torch.allclose(model.predict_noise(z, 500, cond), model.predict_noise(z, 500, other))


def test_the_v_model_trains_its_lora_on_v(family_dirs, monkeypatch):
    """The per-image LoRA of a v-prediction model fits the model's own target, v."""
    from dragnext import lora

    targets = []
    real = lora.training_target
    monkeypatch.setattr(lora, "training_target", lambda *a: targets.append(a[-1]) or real(*a))
    model = load_model(family_dirs["sd21-v"], device="cpu")
    x = torch.rand(1, 3, 48, 48) * 2 - 1
    config = build_config().lora.model_copy(update={"steps": 1})
    lora.train_lora(model, x, model.embed_prompt("a cup"), config, seed=0)
    assert targets == ["v_prediction"]


def style_lora(model_dir: Path, out: Path, kohya: bool = False, seed: int = 1) -> tuple[Path, dict]:
    """A random rank-4 LoRA on the UNet's attention projections (diffusers' names with α = r,
    or kohya's with α = 2), and the update ΔW = (α/r) B A each layer should get."""
    unet = load_model(model_dir, device="cpu").unet
    generator = torch.Generator().manual_seed(seed)
    state, delta = {}, {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_k")):
            down = torch.randn(4, module.in_features, generator=generator) * 0.1
            up = torch.randn(module.out_features, 4, generator=generator) * 0.1
            delta[name] = (0.5 if kohya else 1.0) * up @ down
            if kohya:
                key = "lora_unet_" + name.replace(".", "_")
                state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                              f"{key}.alpha": torch.tensor(2.0)})
            else:
                state.update({f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up})
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out, delta


@pytest.mark.parametrize("arch,kohya", [("sd15", False), ("sd15", True), ("sdxl", False)],
                         ids=["sd15-diffusers", "sd15-kohya", "sdxl-diffusers"])
def test_a_style_lora_is_fused_exactly_once_and_survives_the_per_image_lora(arch, kohya, family_dirs,
                                                                           tmp_path):
    from dragnext.lora import lora_applied, train_lora

    base = load_model(family_dirs[arch], device="cpu")
    path, delta = style_lora(family_dirs[arch], tmp_path / "style.safetensors", kohya=kohya)
    styled = load_model(ModelSource(model=str(family_dirs[arch]), lora=str(path)), device="cpu")
    weights = dict(styled.unet.named_modules())
    plain = dict(base.unet.named_modules())
    for name, d in delta.items():
        assert torch.allclose(weights[name].weight, plain[name].weight + d, atol=1e-5), name
    assert not any("lora" in n for n, _ in styled.unet.named_modules())  # fused, adapter layers gone
    before = {k: v.clone() for k, v in styled.unet.state_dict().items()}
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    cond = styled.embed_prompt("a cup")
    config = build_config().lora.model_copy(update={"steps": 2, "rank": 4})
    [per_image] = train_lora(styled, x, cond, config, 0)
    with lora_applied(styled, [per_image]):
        pass
    assert all(torch.equal(before[k], v) for k, v in styled.unet.state_dict().items())  # style kept, once


def test_vae_and_lora_change_the_output_the_record_and_the_fingerprint(family_dirs, cases, tmp_path):
    model = family_dirs["sd15"]
    parts = components("sd15", seed=7)
    vae_dir = save_components({"vae": parts["vae"]}, tmp_path / "other-vae") / "vae"
    lora_path, _ = style_lora(model, tmp_path / "style" / "pytorch_lora_weights.safetensors")
    plain = edit(model, cases["translate"], tmp_path / "plain.png")
    with_vae = edit(model, cases["translate"], tmp_path / "vae.png", "--vae", str(vae_dir))
    with_lora = edit(model, cases["translate"], tmp_path / "lora.png", "--lora", str(lora_path.parent),
                     "--lora-scale", "0.5")
    images = [np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("plain", "vae", "lora")]
    assert np.abs(images[0] - images[1]).max() > 10 and np.abs(images[0] - images[2]).max() > 10
    assert plain["model"]["vae"] is None and with_vae["model"]["vae"] == str(vae_dir)
    assert with_lora["model"]["lora"] == str(lora_path.parent) and with_lora["model"]["lora_scale"] == 0.5
    sources = [ModelSource(model=str(model)), ModelSource(model=str(model), vae=str(vae_dir)),
               ModelSource(model=str(model), lora=str(lora_path)),
               ModelSource(model=str(model), lora=str(lora_path), lora_scale=0.5)]
    assert len({s.fingerprint() for s in sources}) == 4


def test_a_missing_vae_or_lora_is_one_line(family_dirs, cases, tmp_path, capsys):
    for flag in ("--vae", "--lora"):
        args = ["-q", "edit", "--model", str(family_dirs["sd15"]),
                "--image", str(cases["translate"] / "image.png"),
                "--instruction", str(cases["translate"] / "drag.json"), "--out", str(tmp_path / "o.png"),
                flag, str(tmp_path / "nothing")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{flag} {tmp_path / 'nothing'}: no such file or folder" in err and "Traceback" not in err


def test_a_model_built_in_memory_predicts_like_the_same_model_saved_and_loaded(family_dirs):
    """`make gpu-check` profiles SDXL from memory: it must be the model a folder would give."""
    from dragnext.tiny_model import in_memory_model

    loaded = load_model(family_dirs["sdxl"], device="cpu")
    built = in_memory_model("sdxl", "cpu", torch.float32, full_size=False)
    assert built.architecture == loaded.architecture
    z = torch.randn(1, 4, 16, 16)
    cond = loaded.embed_prompt("a disc", (32, 32))
    assert torch.allclose(built.predict_noise(z, 300, built.embed_prompt("a disc", (32, 32))),
                          loaded.predict_noise(z, 300, cond), atol=1e-5)


def test_a_vae_or_lora_that_is_not_one_is_refused_in_one_line(family_dirs, cases, tmp_path, capsys):
    from safetensors.torch import save_file

    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    wrong = {("--lora", tmp_path / "garbage.safetensors"): "not a safetensors file",
             ("--lora", tmp_path / "weights.safetensors"): "holds no LoRA weights",
             ("--lora", family_dirs["sd15"] / "unet"): "holds no LoRA weights",
             ("--lora", tmp_path): "must hold one .safetensors file (found 2)",
             ("--vae", family_dirs["sd15"] / "unet"): "its VAE is a UNet2DConditionModel"}
    for (flag, path), expected in wrong.items():
        case = cases["scale"]
        args = ["-q", "edit", "--model", str(family_dirs["sd15"]), "--image", str(case / "image.png"),
                "--instruction", str(case / "drag.json"), "--out", str(tmp_path / "o.png"), flag, str(path)]
        assert main(args) == 2, (flag, path)
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1, err
