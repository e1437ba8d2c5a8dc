"""`dragnext profile` and the UNet pass counts every edit records (the cost model)."""

import json

import pytest

from command.main import main
from dragnext.config import build_config

STAGE_FIELDS = {"median_s", "runs_s"}


def test_profile_reports_every_stage_and_counts_the_papers_passes_exactly(tiny_model_dir, tmp_path, capsys):
    """Paper settings but for LoRA's steps: T = 38 of 50, PBSI 6 steps x 10 iterations."""
    out = tmp_path / "profile.json"
    assert main(["-q", "profile", "--model", str(tiny_model_dir), "--size", "64", "--warmup", "0",
                 "--repeat", "1", "--set", "lora.steps=5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"model", "device", "device_name", "dtype", "torch", "diffusers", "working_size", "warmup",
            "repeat", "stages", "unet_passes", "peak_memory", "total", "config"} <= set(report)
    assert list(report["stages"]) == ["prepare", "lora", "inversion", "pbsi", "denoise", "decode"]
    assert all(set(s) == STAGE_FIELDS and len(s["runs_s"]) == 1 for s in report["stages"].values())
    assert report["working_size"] == [64, 64] and report["peak_memory"]["mb"] > 0

    config = build_config(overrides=["lora.steps=5"])
    T, K, steps = config.inversion.start_step, config.pbsi.iterations, config.pbsi.steps
    assert (T, K, steps) == (38, 10, 6)
    passes = report["unet_passes"]["by_stage"]
    assert passes["lora"] == {"forward": 5, "backward": 5, "forward_samples": 5 * config.lora.batch_size,
                              "backward_samples": 5 * config.lora.batch_size}
    assert passes["inversion"] == {"forward": T, "backward": 0, "forward_samples": T, "backward_samples": 0}
    # per step: the reference branch once, K iterations (forward and backward), the step to t - 1
    assert passes["pbsi"] == {"forward": steps * (K + 2), "backward": steps * K,
                              "forward_samples": steps * (K + 2), "backward_samples": steps * K}
    # from T' - 1 to 0, the reference and the edit as one batch of 2
    assert passes["denoise"] == {"forward": T - steps, "backward": 0, "forward_samples": 2 * (T - steps),
                                 "backward_samples": 0}
    assert report["unet_passes"]["total"]["forward"] == 5 + T + steps * (K + 2) + T - steps
    printed = capsys.readouterr().out
    assert "pbsi" in printed and "UNet bwd" in printed and "peak memory" in printed


def test_the_peers_pass_counts(tiny_model, fast_config):
    """warp makes no UNet pass of its own; dragdiffusion one forward and backward per iteration."""
    from bench.cases import make_case
    from bench.run import item_of
    from dragnext.edit import edit

    item = item_of(make_case("translate", 0))
    warp_config = build_config(fast_config.to_record(), ["method=warp"])
    warp = edit(item.image, item.instruction, tiny_model, warp_config)
    assert "pbsi" not in warp.unet_passes["by_stage"]
    peer = build_config(fast_config.to_record(), ["method=dragdiffusion", "dragdiffusion.iterations=3"])
    passes = edit(item.image, item.instruction, tiny_model, peer).unet_passes["by_stage"]["pbsi"]
    assert (passes["forward"], passes["backward"]) == (1 + 3, 3)  # the reference, then one per iteration


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message a CPU box gets")
def test_gpu_check_on_a_machine_without_cuda_says_so_and_fails():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--json", "/nonexistent/x.json"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no CUDA device here" in done.stderr
