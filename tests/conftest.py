import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spin-waiting costs 15x on 2 cores
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach a hub
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf-home-")  # an empty cache: no stray models
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no telemetry lookups off the machine
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dragnext.config import build_config, parse_overrides  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# Small everywhere: a 64 px working size (latent 32x24 for 128x96), 2 LoRA steps, T = 6.
FAST = ["size=64", "lora.steps=2", "inversion.num_steps=10", "inversion.strength=0.6",
        "pbsi.steps=2", "pbsi.iterations=3"]
FAST_OVERRIDES = parse_overrides(FAST)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API for the session (worker processes report to it too)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_store():
    """A real S3 endpoint (moto's server, behind the fault proxy, left up) on 127.0.0.1 with
    one bucket; configured through the standard AWS variables, which worker processes
    inherit. (bucket URI, the proxy (counts what the store serves), a direct filesystem)."""
    from infra.faults import store_behind_proxy

    with store_behind_proxy("dragnext-test") as (proxy, direct):
        yield "s3://dragnext-test", proxy, direct


@pytest.fixture(scope="session")
def s3_bucket(s3_store):
    return s3_store[0]


def wait_for(condition, timeout: float, what: str, poll_s: float = 0.2):
    """`condition()`'s first truthy value, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from dragnext.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from dragnext.model import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture
def fast_config():
    return build_config(overrides=FAST)


def disc(height: int, width: int, cx: float, cy: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2


def save_mask(path, mask: np.ndarray) -> str:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path.name


@pytest.fixture
def scene(tmp_path):
    """A 128x96 image (non-square) with a translate and a rotate drag, as files."""
    height, width = 96, 128
    rng = np.random.default_rng(0)
    image = (rng.random((height, width, 3)) * 60 + 100).astype(np.uint8)
    disc_mask = disc(height, width, 40, 40, 10)
    bar = np.zeros((height, width), dtype=bool)
    bar[66:74, 80:110] = True
    image[disc_mask] = (220, 40, 40)
    image[bar] = (40, 40, 220)
    Image.fromarray(image).save(tmp_path / "image.png")
    instruction = {
        "prompt": "a red disc and a blue bar",
        "drags": [
            {"type": "translate", "handle_mask": save_mask(tmp_path / "h0.png", disc_mask),
             "handle": [40, 40], "target": [60, 44]},
            {"type": "rotate", "handle_mask": save_mask(tmp_path / "h1.png", bar),
             "handle": [108, 70], "target": [95, 83], "center": [95, 70]},
        ],
    }
    return tmp_path, instruction
