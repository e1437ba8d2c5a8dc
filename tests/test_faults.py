"""Faults injected into real runs of the `dragnext` command: a worker process killed, the
store unreachable mid-run and at the end, and the run itself SIGKILLed. Nothing is lost
or duplicated, and what failed is retried to success."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from command.main import main
from flows.results import read_results
from flows.shard import progress_log
from infra.faults import store_behind_proxy
from manifests.examples import DEMO_MANIFEST
from manifests.schema import read_table, write_manifest
from tests.conftest import FAST, wait_for
from tests.scenes import SYNTHETIC

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
SETS = [a for s in FAST for a in ("--set", s)]
ROOT = Path(__file__).resolve().parents[1]
DEMO_ITEMS = read_table(str(DEMO_MANIFEST)).num_rows


def finished_rows(out: Path) -> list[Path]:
    """The item rows written so far; not a `.tmp-…` file an atomic write is filling now."""
    return [p for p in (out / "rows").glob("*.json") if not p.name.startswith(".")]


def rows_written(out: Path) -> int:
    return len(finished_rows(out))


def assert_one_row_per_item(results: list[dict], n: int) -> None:
    assert len(results) == n and len({r["item_id"] for r in results}) == n


class KillWorkers(logging.Handler):
    """SIGKILLs a worker as it starts a batch that holds `item` (its forwarded "editing …"
    line), at most `times` times: an item that kills every worker that edits it, as a crash
    in a native library or the kernel's OOM killer does, or a one-off kill."""

    def __init__(self, item: str | None = None, times: int = 1_000):
        super().__init__()
        self.item, self.times, self.killed = item, times, []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.match(r"\[worker (\d+)\] tasks\.pool: editing (.*) \(attempt", record.getMessage())
        if found and len(self.killed) < self.times and (self.item is None
                                                         or self.item in found[2].split(", ")):
            self.killed.append((int(found[1]), found[2]))
            os.kill(int(found[1]), signal.SIGKILL)


@pytest.fixture
def kill_workers():
    handlers = []

    def attach(**kwargs) -> KillWorkers:
        handlers.append(KillWorkers(**kwargs))
        logging.getLogger("tasks.pool.worker").addHandler(handlers[-1])
        return handlers[-1]

    yield attach
    for handler in handlers:
        logging.getLogger("tasks.pool.worker").removeHandler(handler)


def synthetic_job(tmp_path, ids: list[str]) -> Path:
    """The synthetic scenes' folder with a manifest of its translate row under each id."""
    folder = tmp_path / "job"
    shutil.copytree(SYNTHETIC.parent, folder)
    row = read_table(str(SYNTHETIC)).to_pylist()[0]
    write_manifest([{**row, "item_id": item_id} for item_id in ids], str(folder / "manifest.parquet"))
    return folder / "manifest.parquet"


def test_a_worker_killed_once_mid_batch_costs_no_item(tmp_path, tiny_model_dir, kill_workers, capsys):
    out = tmp_path / "out"
    killer = kill_workers(times=1)
    code = main(["run", str(DEMO_MANIFEST), "--output", str(out), "--model", str(tiny_model_dir),
                 "--workers", "2", *SETS, "--set", "runtime.batch_size=2"])
    assert len(killer.killed) == 1
    assert code == 0, capsys.readouterr()
    results = read_results(str(out / "results.parquet"))
    assert_one_row_per_item(results, DEMO_ITEMS)
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in results), results
    pid, batch = killer.killed[0]
    for item_id in batch.split(", "):  # the lost batch was edited again, on a fresh worker
        record = json.loads((out / "items" / item_id / "record.json").read_text())
        assert record["worker_losses"] == [f"worker died (signal SIGKILL) editing {batch}"]
        assert record["worker"]["pid"] != pid


def test_an_item_that_kills_every_worker_fails_alone_and_its_batch_mates_succeed(tmp_path, tiny_model_dir,
                                                                                kill_workers, capsys):
    manifest, out = synthetic_job(tmp_path, ["good-a", "poison", "good-b"]), tmp_path / "out"
    killer = kill_workers(item="poison")
    code = main(["run", str(manifest), "--output", str(out), "--model", str(tiny_model_dir),
                 "--workers", "2", "--retries", "2", *SETS, "--set", "runtime.batch_size=3"])
    assert code == 1
    rows = {r["item_id"]: r for r in read_results(str(out / "results.parquet"))}
    assert rows["good-a"]["status"] == rows["good-b"]["status"] == "succeeded", rows
    poison = rows["poison"]
    assert poison["status"] == "failed" and poison["attempts"] == 1  # not retried: it is the item
    assert poison["error"].startswith(f"WorkerKilled: killed its worker {len(killer.killed)} times "
                                      "(signal SIGKILL), the last editing it alone"), poison["error"]
    # the batch twice, then halves until the item was alone: [a] [poison, b] then [poison] [b]
    lost = [batch for _, batch in killer.killed]
    assert lost == ["good-a, poison, good-b"] * 2 + ["poison, good-b", "poison"], lost
    for item_id, lost in (("good-a", 2), ("good-b", 3)):  # every loss it was part of, recorded
        record = json.loads((out / "items" / item_id / "record.json").read_text())
        assert record["worker_losses"] == [f"worker died (signal SIGKILL) editing {batch}"
                                           for _, batch in killer.killed[:lost]], record["worker_losses"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture
def flaky_store():
    """moto's S3 server behind a proxy that can be switched off, with the synthetic job in a
    bucket; `direct` bypasses the proxy."""
    bucket = f"flaky-{uuid.uuid4().hex[:8]}"  # moto keeps one store per process: a bucket per test
    with store_behind_proxy(bucket) as (proxy, direct):
        for path in SYNTHETIC.parent.iterdir():
            direct.pipe(f"{bucket}/job/{path.name}", path.read_bytes())
        yield proxy, direct, bucket


class OnProgress(logging.Handler):
    """Calls `act(done, total)` as each item finishes, in the run's own thread: a fault
    injected here lands exactly between an item's row and what the run writes next."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def emit(self, record: logging.LogRecord) -> None:
        self.act(record.done, record.total)


@pytest.fixture
def on_progress():
    handlers = []

    def attach(act) -> None:
        handlers.append(OnProgress(act))
        progress_log.addHandler(handlers[-1])

    yield attach
    for handler in handlers:
        progress_log.removeHandler(handler)


def test_store_outages_mid_run_and_at_the_end_are_ridden_out(flaky_store, on_progress, tiny_model_dir,
                                                             capsys):
    proxy, direct, bucket = flaky_store
    # down for 4 s after the first item, and again after the last (as the results are written)
    on_progress(lambda done, total: proxy.outage(4.0) if done in (1, total) else None)
    code = main(["-q", "run", f"s3://{bucket}/job/manifest.parquet", "--output", f"s3://{bucket}/out",
                 "--model", str(tiny_model_dir), "--workers", "2", *SETS])
    assert proxy.outages == 2
    assert code == 0, capsys.readouterr()
    results = read_results(f"s3://{bucket}/out/results.parquet")
    assert_one_row_per_item(results, 3)
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in results)
    assert len(direct.ls(f"{bucket}/out/rows")) == 3
    assert json.loads(direct.cat(f"{bucket}/out/summary.json"))["status"] == "finished"


@pytest.mark.slow  # about 4 minutes: every client under s3fs retries the dead store in its own way
def test_a_store_still_down_at_the_end_leaves_the_results_in_a_local_folder(
        flaky_store, on_progress, tmp_path, tiny_model_dir, monkeypatch, capsys):
    proxy, direct, bucket = flaky_store
    monkeypatch.setenv("DRAGNEXT_STORE_RETRIES", "2")
    monkeypatch.setenv("DRAGNEXT_STORE_BACKOFF_S", "0.2")
    monkeypatch.setenv("DRAGNEXT_FALLBACK_DIR", str(tmp_path / "fallback"))
    on_progress(lambda done, total: proxy.down() if done == total else None)
    code = main(["-q", "run", f"s3://{bucket}/job/manifest.parquet", "--output", f"s3://{bucket}/out",
                 "--model", str(tiny_model_dir), "--workers", "1", *SETS])
    assert code == 3
    err = capsys.readouterr().err
    assert "store unreachable" in err and str(tmp_path / "fallback") in err
    [folder] = (tmp_path / "fallback").iterdir()
    results = read_results(str(folder / "results.parquet"))
    assert [r["status"] for r in results] == ["succeeded"] * 3
    assert json.loads((folder / "summary.json").read_text())["counts"] == {"succeeded": 3}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_run_leaves_no_process_and_resumes_without_redoing_items(tmp_path, tiny_model_dir, sig):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    run = subprocess.Popen([sys.executable, "-m", "command", "-q", "run", str(DEMO_MANIFEST), "--output",
                            str(out), "--model", str(tiny_model_dir), "--workers", "2", *SETS,
                            "--set", "pbsi.iterations=25"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: rows_written(out) >= 2, 300, "two finished items")
        tree = psutil.Process(run.pid).children(recursive=True)
        assert len(tree) >= 3  # the Prefect server, two workers (and the watchdog, multiprocessing's tracker)
        run.send_signal(sig)
        assert run.wait(timeout=60) == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
        done = {p.stem: p.stat().st_mtime_ns for p in finished_rows(out)}
        edited = {i: (out / "items" / i / "edited.png").stat().st_mtime_ns for i in done}
        _, alive = psutil.wait_procs(tree, timeout=20)
        assert alive == [], [p.cmdline() for p in alive]  # nothing of the run outlives it
    finally:
        if run.poll() is None:
            run.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "running"  # written before the first item

    assert main(["-q", "run", str(DEMO_MANIFEST), "--output", str(out), "--model", str(tiny_model_dir),
                 "--workers", "2", *SETS, "--set", "pbsi.iterations=25"]) == 0
    results = read_results(str(out / "results.parquet"))
    assert_one_row_per_item(results, DEMO_ITEMS)
    assert json.loads((out / "summary.json").read_text())["resumed"] >= len(done)
    for item_id, stamp in edited.items():  # finished items were kept, not rendered again
        assert (out / "items" / item_id / "edited.png").stat().st_mtime_ns == stamp
