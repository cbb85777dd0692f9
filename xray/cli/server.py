"""`xray server`: a Prefect server on 127.0.0.1 that survives its own restart.

Its database and its deployment concurrency leases live under PREFECT_HOME (leases live in
server memory by default: a restart forgets them and the engine then ends the run at its next
lease renewal, 410). The tests and benchmarks start their server with the same command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit

from xray.core.errors import InputError

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 4200
LEASE_STORAGE_SETTING = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
FILE_LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"  # PREFECT_HOME
DATABASE_URL_ENV = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


def server_command(port: int = DEFAULT_PORT) -> list[str]:
    """The command that runs a Prefect server on the loopback interface."""
    return [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]


def server_env(
    database_url: str | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The server's environment (from base or os.environ): leases on disk unless set otherwise."""
    env = dict(os.environ if base is None else base)
    env.setdefault(LEASE_STORAGE_SETTING, FILE_LEASE_STORAGE)
    if database_url:
        env[DATABASE_URL_ENV] = database_url
    return env


def check_database_url(url: str) -> None:
    """Refuse a password in a command-line URL: every local user sees it (`ps`, /proc)."""
    if urlsplit(url).password is not None:
        raise InputError(
            "--database-url: the URL holds a password, which every user of this machine can "
            f"read on the command line; set {DATABASE_URL_ENV} in the environment instead "
            "(or keep the password in ~/.pgpass)"
        )


def start_server(port: int = DEFAULT_PORT, database_url: str | None = None) -> int:
    """Run a Prefect server on 127.0.0.1 (SQLite under PREFECT_HOME unless a database URL)."""
    if database_url:
        check_database_url(database_url)
    env = server_env(database_url)
    print(f"Prefect server on http://{LOOPBACK}:{port} (UI and API at /api)", file=sys.stderr)
    print(f"clients: export PREFECT_API_URL=http://{LOOPBACK}:{port}/api", file=sys.stderr)
    try:
        return subprocess.run(server_command(port), env=env, check=False).returncode
    except KeyboardInterrupt:
        return 0
