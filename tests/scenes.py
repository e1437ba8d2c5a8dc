"""What several test files share: the example manifests, scenes and their loaders, the
`dragnext` command, and the stand-ins for the UNet that the PBSI tests use."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cases import TYPES, make_case
from bench.run import item_of
from dragnext.ddim import DDIMSchedule
from dragnext.features import FeatureMap
from dragnext.instruction import EditItem, read_instruction

# CI lays shared/ beside the checkout; DRAGBENCH_FIXTURES points elsewhere if needed.
DRAGBENCH = Path(os.environ.get("DRAGBENCH_FIXTURES", Path(__file__).resolve().parents[2] / "shared"
                                / "fixtures" / "dragbench-sample"))
SYNTHETIC = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "synthetic" / "manifest.parquet"


def dragbench_subset(tmp_path: Path, names: list[str]) -> Path:
    """A copy of some fixture samples (the fixtures themselves stay read-only)."""
    if not DRAGBENCH.is_dir():  # a clone without ../shared runs the rest of the suite
        pytest.skip(f"DragBench fixtures not found at {DRAGBENCH} (set DRAGBENCH_FIXTURES)")
    root = tmp_path / "dragbench"
    for name in names:
        sample = next(DRAGBENCH.glob(f"{name}/*"))
        shutil.copytree(sample, root / name / sample.name)
    return root


def load_scene(folder, spec):
    (folder / "drag.json").write_text(json.dumps(spec))
    return Image.open(folder / "image.png").convert("RGB"), read_instruction(folder / "drag.json")


def dragnext_command() -> list[str]:
    script = Path(sys.executable).parent / "dragnext"
    return [str(script)] if script.exists() else [sys.executable, "-m", "command"]


SIZE = (16, 16)


def flat_schedule(n: int) -> DDIMSchedule:
    """ᾱ = 1 everywhere: with ε = 0 the DDIM step is the identity, so z_{T'−1} = z_T'."""
    return DDIMSchedule(timesteps=list(range(-1, n)), alphas=torch.ones(n + 1, dtype=torch.float64))


def as_features(x: torch.Tensor) -> FeatureMap:
    """x as F at its own size (read at its pixels, it is x)."""
    return FeatureMap((x,), tuple(x.shape[-2:]))


def latent_as_features(z: torch.Tensor, t: int):
    return torch.zeros_like(z), as_features(z)


def point(x, y):
    return torch.tensor([x, y], dtype=torch.float64)


CASE_SEED = 0  # a translate the shipped preset gets right; the test checks that it still does


def write_case(case, folder: Path) -> tuple[Path, Path]:
    def save(array: np.ndarray, name: str) -> str:
        Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1)).save(folder / name)
        return name

    image = folder / save(case.scene.render(), "image.png")
    instruction = {"prompt": case.scene.prompt(), "editable_mask": save(case.editable_mask(), "m.png"),
                   "drags": [{"type": case.type, "handle_mask": save(case.handle_mask(), "h.png"),
                              "handle": [float(v) for v in case.handle],
                              "target": [float(v) for v in case.target],
                              **({"center": [float(v) for v in case.center]} if case.center else {})}]}
    (folder / "drag.json").write_text(json.dumps(instruction))
    return image, folder / "drag.json"


def batch_items(scene) -> list[EditItem]:
    """One case of each drag type at 64², and a 128×96 scene: two working sizes."""
    folder, spec = scene
    (folder / "drag.json").write_text(json.dumps(spec))
    image = Image.open(folder / "image.png").convert("RGB")
    wide = EditItem(image, read_instruction(folder / "drag.json"), "wide")
    return [item_of(make_case(kind, seed=1)) for kind in TYPES] + [wide]
