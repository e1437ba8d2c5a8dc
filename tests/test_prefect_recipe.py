"""The Prefect server recipe of infra/README.md ("1. Server"), run as written: its shell
block, with SQLite in a temporary PREFECT_HOME instead of PostgreSQL and a free port
instead of 4200 (the case the UI used to get wrong). The server binds 127.0.0.1 only; its
UI's settings name the API on that port; a page on another origin gets no
`Access-Control-Allow-Origin` (the default would be `*`); with the README's
`PREFECT_SERVER_API_AUTH_STRING`, the API refuses a call without the credentials."""

import base64
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.local_api import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
AUTH = "admin:a-long-random-password"


def server_block() -> str:
    """The shell block under "## 1. Server" in infra/README.md."""
    text = (ROOT / "infra" / "README.md").read_text()
    section = text.split("## 1. Server", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


@contextmanager
def recipe_server(tmp_path: Path, *extra_exports: str):
    """The README's block with a free port and no PostgreSQL line, in a session of its own."""
    port = free_port()
    block = server_block()
    assert "PREFECT_SERVER_API_PORT=4200" in block and "--host 0.0.0.0" not in block
    lines = [line for line in block.splitlines() if "DATABASE_CONNECTION_URL" not in line]
    script = "\n".join([*extra_exports, *lines]).replace("PREFECT_SERVER_API_PORT=4200",
                                                         f"PREFECT_SERVER_API_PORT={port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1",
            "PATH": f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"}
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(["bash", "-euc", script], cwd=tmp_path, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        try:
            return urllib.request.urlopen(f"{url}/ui-settings", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, 180, "the Prefect server of the recipe")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()


def request(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    """(status, headers) of one request; an HTTP error is an answer too."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers or {}, method=method),
                                    timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_the_recipe_serves_its_ui_the_api_on_its_own_port_and_refuses_other_origins(tmp_path):
    with recipe_server(tmp_path) as url:
        settings = json.loads(urllib.request.urlopen(f"{url}/ui-settings", timeout=5).read())
        assert settings["api_url"] == f"{url}/api"
        assert request(f"{url}/api/health")[0] == 200
        # a page on another origin: the preflight of its JSON post, and a simple request
        preflight = {"Origin": "http://attacker.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"}
        _, headers, _ = request(f"{url}/api/flow_runs/filter", "OPTIONS", preflight)
        assert headers.get("access-control-allow-origin") is None
        _, headers, _ = request(f"{url}/api/flow_runs/filter", "POST",
                                {"Origin": "http://attacker.example", "Content-Type": "text/plain"}, b"{}")
        assert headers.get("access-control-allow-origin") is None
        # the UI's own origin is allowed
        _, headers, _ = request(f"{url}/api/flow_runs/filter", "OPTIONS", {**preflight, "Origin": url})
        assert headers.get("access-control-allow-origin") == url


def test_with_the_auth_string_the_api_refuses_a_call_without_the_credentials(tmp_path):
    with recipe_server(tmp_path, f"export PREFECT_SERVER_API_AUTH_STRING='{AUTH}'") as url:
        assert json.loads(urllib.request.urlopen(f"{url}/ui-settings", timeout=5).read())["auth"] == "BASIC"
        body, json_type = b'{"limit": 1}', {"Content-Type": "application/json"}
        assert request(f"{url}/api/flow_runs/filter", "POST", json_type, body)[0] == 401
        for credentials, status in ((b"admin:guess", 401), (AUTH.encode(), 200)):
            basic = {**json_type, "Authorization": f"Basic {base64.b64encode(credentials).decode()}"}
            assert request(f"{url}/api/flow_runs/filter", "POST", basic, body)[0] == status
