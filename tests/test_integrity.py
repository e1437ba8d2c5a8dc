"""Nothing stale, nothing lost, nothing outside (issue 16), through the `dragnext` command:
resume only while every input and output is unchanged, a full or read-only output, two runs
into one output, results-named manifest columns, Ctrl-C, hostile rows and files, and the
tools that must not destroy their input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from command.main import main
from flows.lease import LEASE_NAME
from flows.results import read_results
from infra.faults import FaultUnavailable, capped_disk, read_only_disk, resize_disk
from manifests.examples import DEMO_MANIFEST
from manifests.schema import read_table
from tests.conftest import FAST, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
SETS = [a for s in FAST for a in ("--set", s)]
SLOW = [*SETS, "--set", "pbsi.iterations=25"]  # long enough to be interrupted mid-item
ROOT = Path(__file__).resolve().parents[1]


def job_folder(tmp_path: Path, n: int = 8) -> Path:
    """A copy of the demo's scenes with the first `n` rows."""
    folder = tmp_path / "job"
    shutil.copytree(DEMO_MANIFEST.parent, folder)
    table = read_table(str(folder / "manifest.parquet"))
    pq.write_table(table.slice(0, n), folder / "manifest.parquet")
    return folder


def edit_rows(manifest: Path, change) -> None:
    table = read_table(str(manifest))
    rows = table.to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)


def stamps(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("items/*/edited.png")}


def run(manifest, out, model, *extra) -> list[str]:
    return ["-q", "run", str(manifest), "--output", str(out), "--model", str(model), *SETS, *extra]


def test_a_rerun_keeps_an_item_only_while_every_input_and_output_is_unchanged(tmp_path, tiny_model_dir,
                                                                             capsys, monkeypatch):
    job = job_folder(tmp_path, 4)
    monkeypatch.chdir(job)  # relative URIs on the command line: the summary must not depend on them
    assert main(run("manifest.parquet", "../out", tiny_model_dir)) == 0
    out = tmp_path / "out"
    before = stamps(out)
    records = [json.loads(p.read_text()) for p in out.glob("items/*/record.json")]
    assert {r["worker"]["pid"] for r in records} != {os.getpid()}  # edited in a worker process
    summary = json.loads((out / "summary.json").read_text())
    assert summary["manifest_uri"] == str(job / "manifest.parquet") and summary["output_uri"] == str(out)
    capsys.readouterr()

    ids = [r["item_id"] for r in read_results(str(out / "results.parquet"))]
    edit_rows(job / "manifest.parquet", lambda rows: rows[0]["drags"][0]["target"].update(
        x=rows[0]["drags"][0]["target"]["x"] + 2))                  # a drag changed
    image = job / f"images/{ids[1]}.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)                              # an image's bytes changed
    (out / "items" / ids[2] / "edited.png").unlink()                  # an output deleted
    assert main(run("manifest.parquet", "../out", tiny_model_dir)) == 0
    assert "4 succeeded (1 kept from before)" in capsys.readouterr().out
    after = stamps(out)
    assert after[ids[3]] == before[ids[3]]  # the one untouched item was kept
    assert all(after[i] != before[i] for i in ids[:2]) and ids[2] in after  # the others ran again

    other_model = tmp_path / "retrained"
    shutil.copytree(tiny_model_dir, other_model)
    weights = next(other_model.glob("unet/*.safetensors"))
    tensors = load_file(weights)
    save_file({k: v + 1e-3 for k, v in tensors.items()}, weights)  # the same name, other weights
    assert main(run("manifest.parquet", "../out", other_model, "--items", ids[3])) == 0
    assert stamps(out)[ids[3]] != after[ids[3]]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # retry from another folder: the run's URIs are absolute
    assert main(["-q", "retry", str(out / "results.parquet")]) == 0
    assert "4 succeeded (4 kept from before)" in capsys.readouterr().out


@contextmanager
def small_disk(path: Path, size: str):
    try:
        with capped_disk(path, size):
            yield path
    except FaultUnavailable as error:
        pytest.skip(str(error))


def test_a_full_disk_stops_the_run_loses_no_finished_row_and_a_rerun_completes_it(tmp_path, tiny_model_dir,
                                                                                 capsys, monkeypatch):
    monkeypatch.setenv("DRAGNEXT_FALLBACK_DIR", str(tmp_path / "fallback"))
    job = job_folder(tmp_path)
    pairs = ("--set", "runtime.batch_size=2")  # batches finish one after another as the disk fills
    with small_disk(tmp_path / "disk", "1500k") as disk:
        out = disk / "out"
        started = time.monotonic()
        assert main(run(job / "manifest.parquet", out, tiny_model_dir, *pairs)) == 3
        err = capsys.readouterr().err
        assert "disk full" in err and str(tmp_path / "fallback") in err and "Traceback" not in err
        assert time.monotonic() - started < 120
        # every stored row parses: none was torn by the full disk
        stored = {p.stem: json.loads(p.read_text())["status"] for p in (out / "rows").glob("*.json")}
        assert not list(out.rglob(".tmp-*"))  # no half-written file left behind
        [fallback] = (tmp_path / "fallback").iterdir()
        results = read_results(str(fallback / "results.parquet"))
        assert len(results) == 8
        assert json.loads((fallback / "summary.json").read_text())["status"] == "stopped"
        done = {item for item, status in stored.items() if status == "succeeded"}
        assert 1 <= len(done) < 8
        assert {r["item_id"] for r in results if r["status"] == "succeeded"} == done
        assert any("not run: the output cannot take writes" in (r["error"] or "") for r in results)

        resize_disk(disk, "20m")
        assert main(run(job / "manifest.parquet", out, tiny_model_dir, *pairs)) == 0
        assert f"8 succeeded ({len(done)} kept from before)" in capsys.readouterr().out

        read_only_disk(disk)
        started = time.monotonic()
        assert main(run(job / "manifest.parquet", tmp_path / "disk" / "out2", tiny_model_dir)) == 3
        assert "read-only" in capsys.readouterr().err
        assert time.monotonic() - started < 15  # a permanent refusal, not an outage to wait out


def write_lease(out: Path, host: str, age_s: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LEASE_NAME).write_text(json.dumps({"run_id": "night-run-42", "host": host, "pid": 4242,
                                              "beat": time.time() - age_s}))


def test_a_second_run_into_a_leased_output_refuses_and_a_stale_lease_is_taken_over(tmp_path, tiny_model_dir,
                                                                                   capsys, caplog):
    job = job_folder(tmp_path, 1)
    out = tmp_path / "out"
    write_lease(out, "gpu-box-7", age_s=5)
    started = time.monotonic()
    assert main(run(job / "manifest.parquet", out, tiny_model_dir)) == 2
    err = capsys.readouterr().err
    assert "in use by run night-run-42 on host gpu-box-7 (pid 4242)" in err and "Traceback" not in err
    assert time.monotonic() - started < 15 and not (out / "summary.json").exists()

    write_lease(out, "gpu-box-7", age_s=3600)  # that run died an hour ago
    assert main(run(job / "manifest.parquet", out, tiny_model_dir)) == 0
    assert "taking over output" in caplog.text and "night-run-42" in caplog.text
    assert not (out / LEASE_NAME).exists()  # released at the end


def test_results_named_manifest_columns_are_refused_up_front(tmp_path, tiny_model_dir, capsys):
    job = job_folder(tmp_path, 2)
    table = read_table(str(job / "manifest.parquet"))
    table = table.append_column("status", pa.array(["new", "new"]))
    table = table.append_column("attempts", pa.array([1, 2]))
    pq.write_table(table, job / "manifest.parquet")
    assert main(run(job / "manifest.parquet", tmp_path / "out", tiny_model_dir)) == 2
    err = capsys.readouterr().err
    assert "column(s) status, attempts would collide with the results columns" in err
    assert main(["manifest", "validate", str(job / "manifest.parquet")]) == 1
    assert "status, attempts" in capsys.readouterr().out


def test_ctrl_c_stops_within_ten_seconds_and_keeps_every_finished_item(tmp_path, tiny_model_dir):
    job, out = job_folder(tmp_path), tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    process = subprocess.Popen([sys.executable, "-m", "command", "-q", "run", str(job / "manifest.parquet"),
                                "--output", str(out), "--model", str(tiny_model_dir), "--workers", "2",
                                *SLOW],
                               cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(list(out.glob("rows/*.json"))) >= 2, 300, "two finished items")
        tree = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        started = time.monotonic()
        assert process.wait(timeout=30) == 130
        assert time.monotonic() - started < 10
        _, alive = psutil.wait_procs(tree, timeout=20)
        assert alive == []
    finally:
        if process.poll() is None:
            process.kill()
    assert "interrupted" in process.stderr.read().decode()
    finished = {p.parent.name for p in out.glob("items/*/record.json")}
    rows = {p.stem for p in out.glob("rows/*.json")}
    assert finished <= rows  # an item whose outputs were written has its row


def hostile_job(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    """The demo's first row, then rows whose files are hostile: (item id, expected error)."""
    job = job_folder(tmp_path, 1)
    good = read_table(str(job / "manifest.parquet")).to_pylist()[0]
    (job / "a-folder.png").mkdir()
    os.mkfifo(job / "a-fifo.png")
    secret = tmp_path / "secret.png"
    shutil.copy(job / good["image_uri"], secret)
    (job / "link.png").symlink_to(secret)  # inside the folder, pointing outside it
    rows = [good]
    expected = []

    def add(item_id, change, error):
        rows.append({**good, **change, "item_id": item_id})
        expected.append((item_id, error))

    drag = good["drags"][0]
    add("dir-image", {"image_uri": "a-folder.png"}, "image_uri: 'a-folder.png' is a directory, not a file")
    add("fifo-image", {"image_uri": "a-fifo.png"}, "image_uri: 'a-fifo.png' is not a regular file")
    add("fifo-mask", {"drags": [{**drag, "handle_mask_uri": "a-fifo.png"}]},
        "drags[0].handle_mask_uri: 'a-fifo.png' is not a regular file")
    add("dir-mask", {"editable_mask_uri": "a-folder.png"},
        "editable_mask_uri: 'a-folder.png' is a directory")
    add("symlink-out", {"image_uri": "link.png"}, "image_uri: 'link.png' is outside the manifest's folder")
    add("symlink-mask", {"drags": [{**drag, "handle_mask_uri": "link.png"}]},
        "drags[0].handle_mask_uri: 'link.png' is outside")
    add("not-utf8", {}, "prompt: is not valid UTF-8 text")
    add("blocks-beyond-model", {"params": json.dumps({"features.blocks": [9]})},
        "params: invalid config: features.blocks: [9] names a decoder stage this model lacks")
    table = pa.Table.from_pylist(rows, schema=read_table(str(job / "manifest.parquet")).schema)
    prompts = [p.encode() for p in table["prompt"].to_pylist()]
    prompts[-2] = b"a red disc \xff\xfe"
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt",
                             pa.array(prompts, pa.binary()).view(pa.string()))
    pq.write_table(table, job / "manifest.parquet")
    return job, expected


def test_hostile_rows_and_files_are_invalid_alone_and_validate_never_hangs(tmp_path, tiny_model_dir, capsys):
    job, expected = hostile_job(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    validate = subprocess.run([sys.executable, "-m", "command", "manifest", "validate",
                               str(job / "manifest.parquet"), "--model", str(tiny_model_dir)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 1 and "Traceback" not in validate.stdout + validate.stderr
    for item_id, error in expected:
        assert f"(item '{item_id}'): {error}" in validate.stdout, (item_id, validate.stdout)

    out = tmp_path / "out"
    assert main(run(job / "manifest.parquet", out, tiny_model_dir)) == 1
    printed = capsys.readouterr()
    assert f"{len(expected)} invalid, 1 succeeded" in printed.out and "Traceback" not in printed.err
    results = {r["item_id"]: r for r in read_results(str(out / "results.parquet"))}
    for item_id, error in expected:
        assert results[item_id]["status"] == "invalid" and error in results[item_id]["error"], item_id


def diverging_model(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model with NaN output weights: every edit it makes diverges."""
    shutil.copytree(tiny_model_dir, folder)
    weights = next(folder.glob("unet/*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k in tensors if k.startswith("conv_out") and k.endswith("weight"))
    save_file({**tensors, name: torch.full_like(tensors[name], float("nan"))}, weights)
    return folder


def test_an_edit_that_diverges_is_failed_with_its_reason_never_succeeded(tmp_path, tiny_model_dir, capsys):
    broken = diverging_model(tiny_model_dir, tmp_path / "broken-model")
    job = job_folder(tmp_path, 1)
    assert main(run(job / "manifest.parquet", tmp_path / "out", broken)) == 1
    [row] = read_results(str(tmp_path / "out" / "results.parquet"))
    assert row["status"] == "failed" and "EditFailed" in row["error"] and "non-finite" in row["error"]
    assert row["attempts"] == 1 and row["image_uri"] is None  # not retried: it would diverge again


def test_the_run_guard_stops_a_run_whose_first_items_mostly_fail(tmp_path, tiny_model_dir, capsys):
    broken = diverging_model(tiny_model_dir, tmp_path / "broken-model")
    job, out = job_folder(tmp_path, 8), tmp_path / "out"
    assert main(run(job / "manifest.parquet", out, broken, "--workers", "1", "--set", "runtime.batch_size=1",
                    "--guard-items", "4", "--guard-failed-fraction", "0.5")) == 1
    printed = capsys.readouterr()
    assert "the run stopped early: 3 of the first 3 items failed, more than the guard's 50% of 4" in \
        printed.err
    rows = read_results(str(out / "results.parquet"))
    diverged = [r for r in rows if "EditFailed" in (r["error"] or "")]
    not_started = [r for r in rows if (r["error"] or "").startswith("RunStopped")]
    assert len(rows) == 8 and {r["status"] for r in rows} == {"failed"}
    assert 3 <= len(diverged) <= 4 and len(diverged) + len(not_started) == 8  # one may have been in flight
    assert all("more than the guard's 50% of 4" in r["error"] for r in not_started)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["guard"] == {"items": 4, "failed_fraction": 0.5}
    assert "3 of the first 3" in summary["guard_stopped"]

    # without the guard the same run edits (and fails) every item
    assert main(run(job / "manifest.parquet", tmp_path / "unguarded", broken, "--workers", "1",
                    "--guard-items", "4", "--guard-failed-fraction", "-1")) == 1
    rows = read_results(str(tmp_path / "unguarded" / "results.parquet"))
    assert all("EditFailed" in r["error"] for r in rows) and "stopped early" not in capsys.readouterr().err
