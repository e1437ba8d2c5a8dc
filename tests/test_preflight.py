"""A command line that cannot work is one line and exit 2 within seconds, before anything
starts; and the tools never destroy their input: `edit --out` and the DragBench importer."""

import io
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from command.main import main
from infra.faults import png_claiming
from manifests.examples import DEMO_MANIFEST
from manifests.schema import read_table

ROOT = Path(__file__).resolve().parents[1]


def test_a_bad_set_on_run_is_one_line_and_exit_2_in_seconds_without_starting_prefect(tmp_path,
                                                                                     tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "command", "run", str(DEMO_MANIFEST), "--output",
                           str(tmp_path / "out"), "--model", str(tiny_model_dir), "--set", "nosuch.x=1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert time.monotonic() - started < 30
    lines = [line for line in done.stderr.splitlines() if not line.startswith("[transformers]")]
    assert lines == ["dragnext: error: invalid config: nosuch: Extra inputs are not permitted"], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("problem, args, message", [
    ("output is a file", lambda t, m: ["--output", str(t / "a-file")], "is an existing file; give a folder"),
    ("unknown field", lambda t, m: ["--output", str(t / "{customer}")], "only {date} and {flow_run}"),
    ("empty prefix", lambda t, m: ["--output", str(t / "o"), "--allow-prefix", ""], "empty --allow-prefix"),
    ("relative prefix", lambda t, m: ["--output", str(t / "o"), "--allow-prefix", "imgs"], "is relative"),
    ("no model", lambda t, m: ["--output", str(t / "o"), "--model", str(t / "nowhere")],
     "could not be loaded"),
    ("blocks", lambda t, m: ["--output", str(t / "o"), "--set", "features.blocks=[7]"], "up_blocks are 0-3"),
    ("config file", lambda t, m: ["--output", str(t / "o"), "--config", str(t / "none.json")],
     "does not exist"),
    ("no lora", lambda t, m: ["--output", str(t / "o"), "--lora", str(t / "style.safetensors")],
     "no such file or folder"),
    ("not a lora", lambda t, m: ["--output", str(t / "o"), "--lora", str(t / "a-file")],
     "not a safetensors file"),
    ("not a vae", lambda t, m: ["--output", str(t / "o"), "--vae", str(m / "unet")], "not an AutoencoderKL"),
    ("start layer", lambda t, m: ["--output", str(t / "o"), "--set", "attention.start_layer=10"],
     "10 self-attention layers"),
])
def test_a_command_line_that_cannot_work_is_refused_up_front(tmp_path, tiny_model_dir, capsys, problem, args,
                                                             message):
    (tmp_path / "a-file").write_text("not a folder")
    extra = args(tmp_path, tiny_model_dir)
    model = [] if "--model" in extra else ["--model", str(tiny_model_dir)]
    assert main(["-q", "run", str(DEMO_MANIFEST), *model, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dragnext: error: ") and message in err and "Traceback" not in err, err
    assert err.count("\n") == 1 or problem == "no model"  # that one lists the ways to provide a model


def instruction_beside(tmp_path: Path) -> tuple[Path, Path]:
    image = tmp_path / "drag.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(image)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 20:30] = 255
    Image.fromarray(mask).save(tmp_path / "handle.png")
    instruction = tmp_path / "drag.json"
    instruction.write_text('{"drags": [{"type": "translate", "handle_mask": "handle.png", '
                           '"handle": [25, 25], "target": [35, 30]}]}')
    return image, instruction


@pytest.mark.parametrize("out, message", [
    ("drag.png", "would overwrite the input"),          # the image itself
    ("other/../drag.png", "would overwrite the input"),  # the same file, spelt otherwise
    ("drag.webp", "would overwrite the input"),         # its record, drag.json, is the instruction
    ("edited.xyz", "'.xyz' is not an image format"),
    ("edited", "'(no extension)' is not an image format"),
])
def test_edit_never_overwrites_its_input_and_refuses_an_unknown_format_before_editing(tmp_path, capsys, out,
                                                                                       message):
    image, instruction = instruction_beside(tmp_path)
    before = image.read_bytes(), instruction.read_bytes()
    (tmp_path / "other").mkdir()
    code = main(["-q", "edit", "--model", str(tmp_path / "no-model-needed"), "--image", str(image),
                 "--instruction", str(instruction), "--out", str(tmp_path / out)])
    assert code == 2 and message in capsys.readouterr().err
    assert (image.read_bytes(), instruction.read_bytes()) == before


def dragbench_sample(root: Path, name: str, image: bytes, meta: bytes) -> Path:
    folder = root / "category" / name
    folder.mkdir(parents=True)
    (folder / "original_image.png").write_bytes(image)
    (folder / "meta_data.pkl").write_bytes(meta)
    return folder


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(out, format="PNG")
    return out.getvalue()


def meta(points, mask_shape=(32, 32)) -> bytes:
    return pickle.dumps({"prompt": "a thing", "points": points, "mask": np.ones(mask_shape, np.uint8)})


class HugeArray:
    """Pickles as numpy's reconstruct of a 100000x100000 array: a few bytes asking for 10 GB."""

    def __reduce__(self):
        return np.ndarray.__reduce__(np.zeros(1))[0], (np.ndarray, (100_000, 100_000), b"b")


def test_the_dragbench_importer_refuses_hostile_samples_and_never_overwrites_one_with_another(tmp_path,
                                                                                             capsys):
    root, out = tmp_path / "bench", tmp_path / "out" / "manifest.parquet"
    dragbench_sample(root, "a b", png(32, 32), meta([[4, 4], [8, 8]]))
    dragbench_sample(root, "a_b", png(32, 32), meta([[10, 10], [12, 12]]))
    assert main(["manifest", "from-dragbench", str(root), "--out", str(out)]) == 0
    rows = read_table(str(out)).to_pylist()
    assert len({r["item_id"] for r in rows}) == 2  # "a b" and "a_b" sanitise alike: both kept
    assert len(list((out.parent / "images").iterdir())) == 2

    cases = [
        ("huge", png(32, 32), pickle.dumps({"prompt": "x", "points": [[1, 1], [2, 2]], "mask": HugeArray()}),
         "refused an array of shape (100000, 100000)"),
        ("outside", png(32, 32), meta([[4, 4], [40, 8]]),
         "points[1] = [40, 8] is not a point inside the 32x32"),
        ("nan", png(32, 32), meta([[4, 4], [float("nan"), 8]]), "points[1] = [nan, 8]"),
        ("bomb", png_claiming(20000, 20000), meta([[4, 4], [8, 8]]), "image has 400,000,000 pixels"),
        ("mask", png(32, 32), meta([[4, 4], [8, 8]], mask_shape=(16, 16)),
         "mask is 16x16, the image is 32x32"),
    ]
    for name, image, data, message in cases:
        bad = tmp_path / name
        dragbench_sample(bad, name, image, data)
        started = time.monotonic()
        command = ["manifest", "from-dragbench", str(bad), "--out", str(tmp_path / name / "m.parquet")]
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (name, err)
        assert time.monotonic() - started < 10 and not (tmp_path / name / "m.parquet").exists()

    linked = tmp_path / "linked"
    folder = dragbench_sample(linked, "s", png(32, 32), meta([[4, 4], [8, 8]]))
    (folder / "original_image.png").unlink()
    (folder / "original_image.png").symlink_to(tmp_path / "bench" / "category" / "a b" / "original_image.png")
    assert main(["manifest", "from-dragbench", str(linked), "--out", str(linked / "m.parquet")]) == 2
    assert "leads outside" in capsys.readouterr().err
