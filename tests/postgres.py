"""A throwaway PostgreSQL server on 127.0.0.1 for the tests that run Prefect's server on it,
as production does (infra/README.md). Debian's server binaries (`apt-get install
postgresql`; `.ci/run` installs them when missing); run as the `postgres` user when the
tests run as root, which PostgreSQL refuses."""

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.local_api import free_port


def server_binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL's server is not installed: apt-get install postgresql")
    return Path(found[-1]).parent


@contextmanager
def postgresql(database: str = "prefect") -> Iterator[str]:
    """A fresh cluster with one database, trusting local connections; its SQLAlchemy URL
    for asyncpg (what PREFECT_API_DATABASE_CONNECTION_URL takes)."""
    binaries = server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="dragnext-pg-"))  # not under pytest's root-only folder
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_owner, *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "start",
            "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off")
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run([*as_owner, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
