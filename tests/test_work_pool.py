"""The scale-out path for real: a Prefect server, the `control` and `gpu` process pools
with their workers (`prefect worker start`), the deployments of `infra/prefect.yaml`, and
a bulk run fanned out as one `bulk-edit-shard` flow run per shard. One GPU worker is then
killed mid-shard: its items end `failed` naming the lost run, and `retry-failed`
completes them on the worker that is left."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.local_api import free_port
from flows.results import read_results
from manifests.examples import DEMO_MANIFEST
from manifests.schema import read_table
from tests.conftest import FAST_OVERRIDES, wait_for
from tests.postgres import postgresql

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def kill_tree(process: psutil.Process) -> None:
    tree = [process, *process.children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)


class Stack:
    """A Prefect server (on SQLite, or on PostgreSQL given its URL) and workers, each in a
    process group of its own."""

    def __init__(self, home: Path, database_url: str | None = None):
        self.url = f"http://127.0.0.1:{free_port()}/api"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
                    "PREFECT_HOME": str(home), "PREFECT_API_URL": self.url, "DRAGNEXT_HOME": str(ROOT),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                    "PREFECT_WORKER_QUERY_SECONDS": "1", "DRAGNEXT_HEARTBEAT_S": "1",
                    "PREFECT_LOGGING_LEVEL": "WARNING",
                    # the runs' own lines (shards launched, where) at INFO, as the UI shows them
                    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
                    **({"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {})}
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(Path(self.env["PREFECT_HOME"]) / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen([sys.executable, "-m", "prefect", *args], cwd=ROOT,
                                                env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        return self.processes[name]

    def deploy(self) -> None:
        """The server, both pools and the deployments of infra/prefect.yaml (no workers yet)."""
        port = self.url.split(":")[-1].removesuffix("/api")
        self.start("server", "server", "start", "--host", "127.0.0.1", "--port", port)
        wait_for(self.healthy, 120, "the Prefect server")
        for pool in ("gpu", "control"):
            self.prefect("work-pool", "create", pool, "--type", "process")
        self.prefect("--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml")

    def prefect(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                kill_tree(psutil.Process(process.pid))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request):
    """Every test of the module on each database the Prefect server runs on: SQLite (its
    default) and PostgreSQL (production's, infra/README.md)."""
    if request.param == "sqlite":
        yield None
        return
    with postgresql() as url:
        yield url


@pytest.fixture(scope="module")
def stack(tmp_path_factory, database):
    stack = Stack(tmp_path_factory.mktemp("prefect-stack"), database)
    try:
        stack.deploy()
        stack.start("control", "worker", "start", "--pool", "control", "--name", "control", "--limit", "2")
        for name in ("gpu-a", "gpu-b"):
            stack.start(name, "worker", "start", "--pool", "gpu", "--name", name, "--limit", "1")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(stack):
    with temporary_settings({PREFECT_API_URL: stack.url}), get_client(sync_client=True) as client:
        yield client


def eight_items(folder: Path) -> str:
    rows = read_table(str(DEMO_MANIFEST)).to_pylist()
    for sub in ("images", "masks"):
        for path in (DEMO_MANIFEST.parent / sub).iterdir():
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / path.name).write_bytes(path.read_bytes())
    assert len(rows) == 8  # two of each drag type
    pq.write_table(pa.Table.from_pylist(rows, schema=read_table(str(DEMO_MANIFEST)).schema),
                   folder / "manifest.parquet")
    return str(folder / "manifest.parquet")


def run_deployment_and_wait(client, name: str, parameters: dict, timeout: float = 600):
    deployment = client.read_deployment_by_name(name)
    run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    return wait_for(lambda: (r := client.read_flow_run(run.id)).state.is_final() and r, timeout,
                    f"flow run of {name}")


def children(client, parent_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))


def test_the_deployments_apply_as_the_infra_readme_says(client):
    deployments = {d.name: d for d in client.read_deployments()}
    assert {"bulk-edit", "bulk-edit-shard", "retry-failed"} <= set(deployments)
    bulk = deployments["bulk-edit"]
    assert bulk.work_pool_name == "control" and bulk.enforce_parameter_schema
    assert deployments["bulk-edit-shard"].work_pool_name == "gpu"
    assert bulk.parameters["shard_deployment"] == "bulk-edit-shard/bulk-edit-shard"
    assert {"manifest_uri", "output_uri", "overrides", "item_filter", "allow_prefixes", "shard_size", "vae",
            "lora", "lora_scale"} <= set(bulk.parameter_openapi_schema["properties"])
    assert bulk.schedules[0].schedule.cron == "0 2 * * *"
    assert bulk.schedules[0].parameters["output_uri"].endswith("{date}")
    assert bulk.job_variables["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"].startswith("dragnext")
    assert deployments["retry-failed"].parameter_openapi_schema["required"] == ["results_uri"]
    for name in ("bulk-edit", "bulk-edit-shard", "retry-failed"):  # the UI's form: no None branches
        properties = deployments[name].parameter_openapi_schema["properties"]
        nullable = [p for p, schema in properties.items() if '"null"' in json.dumps(schema)]
        assert not nullable, f"{name}: {nullable} render as 'Property is type None' in the run form"
        assert all(schema.get("description") for schema in properties.values()), name


def test_the_server_keeps_its_state_in_the_configured_database(stack, client, database):
    sqlite = Path(stack.env["PREFECT_HOME"]) / "prefect.db"
    if database is None:
        assert sqlite.exists()
        return
    assert not sqlite.exists()
    libpq_url = database.replace("postgresql+asyncpg://", "postgresql://")
    done = subprocess.run(["psql", libpq_url, "-At", "-c", "select name from deployment order by name"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert {"bulk-edit", "bulk-edit-shard", "retry-failed"} <= set(done.stdout.split())


def test_a_run_fans_out_over_both_gpu_workers_and_merges_one_results_file(stack, client, tiny_model_dir,
                                                                         tmp_path):
    from tests.test_families import style_lora

    out = tmp_path / "out"
    lora, _ = style_lora(tiny_model_dir, tmp_path / "style.safetensors")
    run = run_deployment_and_wait(client, "bulk-edit/bulk-edit", {
        "manifest_uri": eight_items(tmp_path / "job"), "output_uri": str(out), "model": str(tiny_model_dir),
        "lora": str(lora), "lora_scale": 0.8, "overrides": FAST_OVERRIDES, "shard_size": 2})
    assert run.state.is_completed(), run.state.message
    shards = children(client, run.id)
    assert len(shards) == 4 and all(s.state.is_completed() for s in shards)
    results = read_results(str(out / "results.parquet"))
    assert len(results) == 8 and len({r["item_id"] for r in results}) == 8
    assert all(r["status"] == "succeeded" for r in results)
    records = [json.loads(Path(r["record_uri"]).read_text()) for r in results]
    workers = {stack.processes[name].pid for name in ("gpu-a", "gpu-b")}
    # both GPU workers took shards (each shard's run is a child of its worker, its items grandchildren)
    assert {r["worker"]["grandparent_pid"] for r in records} == workers
    # the style LoRA reached every shard's worker through the plan
    assert all(r["model"]["lora"] == str(lora) and r["model"]["lora_scale"] == 0.8 for r in records)
    # the parent's own log says how many shards it launched and where they run
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    line = ("launched 4 shard(s) of up to 2 items as runs of bulk-edit-shard/bulk-edit-shard on the 'gpu' "
            "work pool")
    wait_for(lambda: line in [entry.message for entry in client.read_logs(  # logs reach the API in batches
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))], 60, "the parent's shard line")

    # each shard's page shows its worker process's own lines: the device it uses, the model it loaded
    def shard_lines() -> list[str]:
        return [entry.message for entry in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[s.id for s in shards])))]

    wait_for(lambda: sum("] dragnext.model: loaded model" in m for m in shard_lines()) >= len(shards), 60,
             "the workers' model-load lines")
    assert sum(" uses cpu" in m and m.startswith("[worker ") for m in shard_lines()) >= len(shards)


def test_a_gpu_worker_killed_mid_shard_fails_its_items_and_retry_failed_completes_them(
        stack, client, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    deployment = client.read_deployment_by_name("bulk-edit/bulk-edit")
    parent = client.create_flow_run_from_deployment(deployment.id, parameters={
        "manifest_uri": eight_items(tmp_path / "job"), "output_uri": str(out), "model": str(tiny_model_dir),
        "overrides": FAST_OVERRIDES, "shard_size": 2, "lost_after_s": 15})

    def a_running_shard():
        running = [s for s in children(client, parent.id) if s.state.is_running() and s.infrastructure_pid]
        return running[0] if running else None

    victim = wait_for(a_running_shard, 300, "a running shard")
    shard_process = psutil.Process(int(victim.infrastructure_pid.split(":")[-1]))
    worker = shard_process.parent()
    assert worker.pid in {stack.processes[n].pid for n in ("gpu-a", "gpu-b")}
    kill_tree(worker)  # the machine is gone: the worker and the shard it was running

    run = wait_for(lambda: (r := client.read_flow_run(parent.id)).state.is_final() and r, 600, "the parent")
    assert run.state.is_failed() and "dragnext retry" in run.state.message
    results = read_results(str(out / "results.parquet"))
    assert len(results) == 8 and len({r["item_id"] for r in results}) == 8
    failed = [r for r in results if r["status"] == "failed"]
    assert failed and all(victim.name in r["error"] and "has not beaten" in r["error"] for r in failed)
    assert client.read_flow_run(victim.id).state.is_crashed()

    retry = run_deployment_and_wait(client, "retry-failed/retry-failed",
                                    {"results_uri": str(out / "results.parquet")})
    assert retry.state.is_completed(), retry.state.message
    after = read_results(str(out / "results.parquet"))
    assert len(after) == 8 and len({r["item_id"] for r in after}) == 8
    assert all(r["status"] == "succeeded" for r in after)
