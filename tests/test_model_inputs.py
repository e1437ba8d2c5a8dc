"""Model inputs are checked like rows: a special file, a config that is not what the loader
reads, a LoRA that could not be fused are each one line and exit 2 at preflight, in `run`
and in `edit`, before any weight is loaded; legitimate variants load."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from command.main import main
from dragnext.architecture import read_architecture
from dragnext.model import load_model
from tests.scenes import SYNTHETIC

ROOT = Path(__file__).resolve().parents[1]
ATTN = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture
def model(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny model to break."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def edit_config(model: Path, key: str, value) -> None:
    path = model / "unet" / "config.json"
    config = json.loads(path.read_text())
    if value is None:
        del config[key]
    else:
        config[key] = value
    path.write_text(json.dumps(config))


def commands(model: Path, tmp_path: Path, *extra: str) -> list[list[str]]:
    """`run` and `edit` on the synthetic translate scene with `model` and `extra` arguments."""
    folder = SYNTHETIC.parent
    return [["run", str(SYNTHETIC), "--output", str(tmp_path / "out"), "--model", str(model), *extra],
            ["edit", "--image", str(folder / "translate-disc.png"),
             "--instruction", str(tmp_path / "drag.json"), "--out", str(tmp_path / "edited.png"),
             "--model", str(model), *extra]]


@pytest.fixture
def instruction(tmp_path):
    from manifests.schema import read_table

    row = read_table(str(SYNTHETIC)).to_pylist()[0]
    drag = row["drags"][0]
    shutil.copy(SYNTHETIC.parent / drag["handle_mask_uri"], tmp_path / "handle.png")
    (tmp_path / "drag.json").write_text(json.dumps({"drags": [{
        "type": "translate", "handle_mask": "handle.png",
        "handle": [drag["handle"]["x"], drag["handle"]["y"]],
        "target": [drag["target"]["x"], drag["target"]["y"]]}]}))


def assert_one_line(argv: list[str], expected: str, capsys) -> None:
    assert main(["-q", *argv]) == 2, argv[0]
    err = capsys.readouterr().err.strip()
    assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1, (argv[0], err)


@pytest.mark.parametrize("key, value, expected", [
    ("down_block_types", None, "down_block_types: Field required"),
    ("layers_per_block", [1], "layers_per_block: 1 values for 4 down blocks"),
    ("sample_size", "abc", "sample_size"),
    ("block_out_channels", [32, -1], "block_out_channels.1: Input should be greater than 0"),
    ("use_linear_projection", "yes", "use_linear_projection: Input should be a valid boolean"),
])
def test_a_unet_config_the_loader_cannot_build_is_one_line_naming_the_field(
        model, key, value, expected, tmp_path, instruction, capsys):
    edit_config(model, key, value)
    for argv in commands(model, tmp_path):
        assert_one_line(argv, f"unet/config.json: {expected}", capsys)


@pytest.mark.parametrize("text, expected", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply to be a config"),
    ("[1, 2]", "must be a JSON object, not a list"),
    ("{not json", "not valid JSON"),
])
def test_a_config_file_that_is_no_config_is_one_line(model, text, expected, tmp_path, instruction, capsys):
    (model / "unet" / "config.json").write_text(text)
    for argv in commands(model, tmp_path):
        assert_one_line(argv, expected, capsys)
    shutil.copy(model / "scheduler" / "scheduler_config.json", model / "unet" / "config.json")
    (model / "dragnext.json").write_text(text)  # the model's own preset
    for argv in commands(model, tmp_path):
        assert_one_line(argv, "dragnext.json", capsys)


def test_a_vae_with_no_blocks_or_given_as_a_file_is_refused_at_preflight(model, tmp_path, instruction,
                                                                         capsys):
    vae = Path(shutil.copytree(model / "vae", tmp_path / "vae"))
    config = json.loads((vae / "config.json").read_text())
    (vae / "config.json").write_text(json.dumps({**config, "block_out_channels": []}))
    for argv in commands(model, tmp_path, "--vae", str(vae)):
        assert_one_line(argv, "block_out_channels: List should have at least 1 item", capsys)
    weights = next(vae.glob("*.safetensors"))
    for argv in commands(model, tmp_path, "--vae", str(weights)):
        assert_one_line(argv, "not a folder (give the AutoencoderKL's folder", capsys)


def test_a_non_finite_lora_scale_is_one_line(model, tmp_path, instruction, capsys):
    for argv in commands(model, tmp_path, "--lora-scale", "nan"):
        with pytest.raises(SystemExit) as exit_:
            main(["-q", *argv])
        assert exit_.value.code == 2 and "'nan' is not a finite number" in capsys.readouterr().err


@pytest.mark.parametrize("tensors, expected", [
    ({f"{ATTN}.lora_A.weight": torch.full((4, 32), float("nan")),
      f"{ATTN}.lora_B.weight": torch.zeros(32, 4)},
     f"{ATTN}.lora_A.weight holds values that are not finite"),
    ({f"{ATTN}.lora_A.weight": torch.tensor(1.0), f"{ATTN}.lora_B.weight": torch.tensor(2.0)},
     f"{ATTN}.lora_A.weight is a 0-d tensor; a LoRA factor is a matrix"),
])
def test_a_style_lora_that_could_not_be_fused_is_refused_naming_it(model, tensors, expected, tmp_path,
                                                                  instruction, capsys):
    lora = tmp_path / "style" / "style.safetensors"
    lora.parent.mkdir()
    save_file(tensors, str(lora))
    for argv in commands(model, tmp_path, "--lora", str(lora.parent)):
        assert_one_line(argv, f"--lora {lora.parent}: {expected}", capsys)


def special_file_cases(model: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "style").mkdir()
    os.mkfifo(tmp_path / "style" / "style.safetensors")
    vae = Path(shutil.copytree(model / "vae", tmp_path / "vae"))
    (vae / "config.json").unlink()
    os.mkfifo(vae / "config.json")
    broken = Path(shutil.copytree(model, tmp_path / "fifo-model"))
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.unlink()
    os.mkfifo(weights)
    return {"lora": (["--lora", str(tmp_path / "style")], "style.safetensors is not a regular file"),
            "vae": (["--vae", str(vae)], "config.json is not a regular file"),
            "model": (["--model", str(broken)], f"{weights.name} is not a regular file")}


@pytest.mark.integration
def test_a_fifo_among_the_model_s_files_is_refused_without_opening_it(model, tmp_path, instruction):
    """In a process of its own with a deadline: opening a FIFO blocks for ever."""
    for name, (extra, expected) in special_file_cases(model, tmp_path).items():
        for argv in commands(model, tmp_path, *extra):
            done = subprocess.run([sys.executable, "-m", "command", "-q", *argv], capture_output=True,
                                  text=True, timeout=180, cwd=ROOT)
            assert done.returncode == 2 and expected in done.stderr, (name, argv[0], done.stderr)
            assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_unet_whose_sample_size_is_height_and_width_loads(model):
    config = json.loads((model / "unet" / "config.json").read_text())
    size = config["sample_size"]
    edit_config(model, "sample_size", [size, size])  # diffusers accepts (height, width)
    assert read_architecture(model).native_size == size * 2 ** (
        len(json.loads((model / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
    assert load_model(model, device="cpu").architecture == read_architecture(model)


def test_a_folder_that_links_back_to_itself_is_walked_once(model):
    from dragnext.model_files import check_tree

    (model / "unet" / "a").symlink_to("..")
    (model / "unet" / "b").symlink_to("..")
    check_tree(model, "--model")  # returns: 2^depth paths were a hang


def test_a_dora_lora_s_magnitude_vectors_are_no_factors(model):
    from dragnext.style_lora import check_style_lora

    lora = model.parent / "dora.safetensors"
    save_file({f"{ATTN}.lora_A.weight": torch.zeros(4, 32), f"{ATTN}.lora_B.weight": torch.zeros(32, 4),
               f"{ATTN}.lora_magnitude_vector": torch.ones(32)}, str(lora))
    check_style_lora(lora)
