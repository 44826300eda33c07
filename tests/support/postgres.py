"""A throwaway PostgreSQL cluster for tests: one per test session, one database per test.

    with PostgresCluster() as pg:          # initdb + pg_ctl start (about 1.2 s)
        url = pg.create_database("t1")      # postgresql://postgres@127.0.0.1:PORT/t1
        pg.stop(); pg.start()               # the store-unreachable tests

Uses Debian's server binaries (/usr/lib/postgresql/<v>/bin, installed by scripts/ensure-postgres).
initdb refuses to run as root, so as root the cluster runs as the `postgres` user from a
directory owned by it. Trust authentication, loopback only (listen_addresses=127.0.0.1, Unix
socket in the cluster's own directory), fsync off: it is thrown away at the end.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.gateway import free_port


class PostgresUnavailable(RuntimeError):
    """No server binaries, or the cluster would not start; the message says why."""


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<v>/bin with initdb, else the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable("PostgreSQL server binaries not found; run scripts/ensure-postgres "
                              "(Debian/Ubuntu: apt-get install postgresql)")


class PostgresCluster:
    def __init__(self, port: int | None = None) -> None:
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="spendgate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no `postgres` user to run the server") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.running = False
        self._dbs = 0

    def _run(self, *args: str, timeout: float = 60) -> None:
        cp = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
        if cp.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{' '.join(args[:2])} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}\n{log}")

    def init(self) -> "PostgresCluster":
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        return self

    def start(self) -> "PostgresCluster":
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._dbs += 1
        name = name or f"t{self._dbs}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        try:
            return self.init().start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
