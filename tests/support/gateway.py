"""Run the real spendgate gateway (``mitmdump -s addons/gateway.py``) as a subprocess for tests.

    gw = Gateway(tmp_path, fake)          # fake: FakeProvider (mitmproxy's upstream)
    gw.start()
    env = gw.env()                        # HTTPS_PROXY / SSL_CERT_FILE for client processes
    rows = gw.ledger(wait_for=1)          # `spendgate ledger --json --limit 1000 --db ...`
    gw.stop()                             # SIGTERM, so the addon flushes

Only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import certifi

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEFAULT_POLICY = REPO / "policies" / "example.yaml"
ADDON = REPO / "addons" / "gateway.py"


def _runnable(script: Path) -> bool:
    """The console script exists and its interpreter too (a venv rebuilt elsewhere leaves a dead shebang)."""
    try:
        first = script.read_bytes()[:256].split(b"\n", 1)[0]
    except OSError:
        return False
    return not first.startswith(b"#!") or Path(first[2:].decode(errors="replace").split()[0]).exists()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ssl_cert_file")}
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class GatewayError(RuntimeError):
    pass


class Gateway:
    def __init__(self, tmp: str | Path, fake, policy: str | Path | None = None,
                 user: str = "tester", extra_args: list[str] | tuple[str, ...] = (),
                 start_timeout: float = 30.0, launcher: list[str] | None = None, addon: Path | None = None,
                 env: dict[str, str] | None = None, upstream: bool = True):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.fake = fake
        self.policy = str(DEFAULT_POLICY if policy is None else policy)  # "": the gateway's own default
        self.user = user
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.upstream = upstream  # False: regular mode, mitmproxy connects to targets itself (loopback only)
        self.confdir = self.tmp / "mitm"
        self.db = self.tmp / "ledger.duckdb"
        self.log_file = self.tmp / "gateway.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log_fh = None
        self.mitmdump = str(BIN / "mitmdump")
        self.launcher = launcher or [self.mitmdump]  # how to run mitmdump (an installed wheel's venv, say)
        self.addon = addon or ADDON
        self.proc_env = env  # None: this process's environment minus proxy settings

    # ---- paths / env

    @property
    def ca_file(self) -> str:
        return str(self.confdir / "mitmproxy-ca-cert.pem")

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "HTTPS_PROXY": self.proxy_url,
            "HTTP_PROXY": self.proxy_url,
            "https_proxy": self.proxy_url,
            "http_proxy": self.proxy_url,
            "SSL_CERT_FILE": self.ca_file,
            "NO_PROXY": "",
            "no_proxy": "",
        }

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def websocket_ssl_context(self):
        """For websockets' sync client (`ssl=`): its reads and writes serialized (tests.support.tls)."""
        from tests.support.tls import serialized

        return serialized(self.client_ssl_context())

    def http_client(self, proxy: str | None = None, **kw):
        """An httpx2 client (what the SDKs use) through this gateway, trusting its CA.

        Explicit rather than HTTPS_PROXY / SSL_CERT_FILE: those are process-global and read when a
        client is built, so setting them in-process would leak between tests.
        """
        import httpx2

        kw.setdefault("timeout", 30.0)
        return httpx2.Client(proxy=proxy or self.proxy_url, verify=self.client_ssl_context(), trust_env=False, **kw)

    def command(self) -> list[str]:
        return [
            *self.launcher, "-s", str(self.addon),
            "--listen-host", "127.0.0.1", "-p", str(self.port),
            "--set", f"confdir={self.confdir}",
            *(["--mode", f"upstream:http://127.0.0.1:{self.fake.port}"] if self.upstream else []),
            "--set", f"ssl_verify_upstream_trusted_ca={self.fake.ca_file}",
            "--set", f"spendgate_db={self.db}",
            *(["--set", f"spendgate_policy={self.policy}"] if self.policy else []),
            "--set", f"spendgate_user={self.user}",
            *self.extra_args,
        ]

    # ---- lifecycle

    def start(self) -> "Gateway":
        if self.proc and self.proc.poll() is None:
            return self
        self._log_fh = open(self.log_file, "ab")
        self._log_fh.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n".encode())
        self._log_fh.flush()
        self.proc = subprocess.Popen(self.command(), stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.proc_env or _clean_env(), cwd=str(self.tmp))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayError(f"mitmdump exited with {self.proc.returncode} during start-up; log:\n"
                                   f"{self.log_text()}")
            if Path(self.ca_file).exists() and self._port_open() and self._in_charge():
                return self
            time.sleep(0.05)
        self.kill9()
        raise GatewayError(f"mitmdump not ready after {self.start_timeout}s; log:\n{self.log_text()}")

    def refused_start(self, timeout: float = 60.0) -> int | None:
        """Start a gateway expected to refuse to run; its exit code (None if it did not exit in
        `timeout` seconds). mitmdump may bind its port before it reads the error and exits."""
        try:
            self.start()
            self.proc.wait(timeout)
        except GatewayError:
            pass
        except subprocess.TimeoutExpired:
            return None
        return self.proc.returncode

    def _in_charge(self) -> bool:
        """The addon has opened the ledger: its discovery file is there and names this process (a
        gateway killed with -9 leaves its own behind; unless the admin API is off). Replicas of a
        shared store too: a CLI run against one before its file exists finds the ledger locked."""
        if "spendgate_admin_port=-1" in self.extra_args:
            return True
        try:
            return json.loads(Path(str(self.db) + ".gateway.json").read_text()).get("pid") == self.proc.pid
        except (OSError, ValueError, AttributeError):
            return False

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the addon flushes its ledger), then wait; SIGKILL if it hangs."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_log()
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def restart(self) -> "Gateway":
        self.stop()
        # keep the port so clients' proxy settings stay valid; fall back to a fresh one if taken
        for _ in range(50):
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.port = free_port()
        return self.start()

    def _close_log(self) -> None:
        if self._log_fh:
            try:
                self._log_fh.close()
            except Exception:
                pass
            self._log_fh = None

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            if self._log_fh:
                self._log_fh.flush()
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- CLI

    def cli_command(self, *args: str) -> list[str]:
        exe = BIN / "spendgate"
        base = [str(exe)] if _runnable(exe) else [sys.executable, "-m", "spendgate.cli"]
        return [*base, *args, "--db", str(self.db)]

    def cli(self, *args: str, timeout: float = 60.0, check: bool = False) -> subprocess.CompletedProcess:
        cp = subprocess.run(self.cli_command(*args), capture_output=True, text=True, timeout=timeout,
                            env=_clean_env(), cwd=str(self.tmp), stdin=subprocess.DEVNULL)
        if check and cp.returncode != 0:
            raise GatewayError(f"{cp.args} -> {cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
        return cp

    def ledger(self, wait_for: int | None = None, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Rows of `spendgate ledger --json --limit 1000`, newest first.

        With ``wait_for=n``, poll until at least n rows are visible (the gateway writes through a
        queue, so rows appear shortly after the response); raise with the CLI output and the
        gateway log on timeout.
        """
        deadline = time.monotonic() + timeout
        last: subprocess.CompletedProcess | None = None
        last_err = ""
        while True:
            last = self.cli("ledger", "--json", "--limit", "1000")
            if last.returncode == 0:
                try:
                    rows = json.loads(last.stdout or "[]")
                    if wait_for is None or len(rows) >= wait_for:
                        return rows
                    last_err = f"only {len(rows)} rows (want {wait_for})"
                except json.JSONDecodeError as e:
                    last_err = f"not JSON: {e}"
            else:
                last_err = f"exit {last.returncode}"
            if wait_for is None and last.returncode == 0:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        raise GatewayError(
            f"spendgate ledger failed ({last_err}): {last.args}\nstdout:\n{last.stdout[-3000:]}\n"
            f"stderr:\n{last.stderr[-3000:]}\n--- gateway log (tail) ---\n{self.log_text()[-4000:]}")


def providerless(tmp: str | Path, proxy_port: int, admin_port: int, log_tail: int = 3000):
    """A started gateway with no provider behind it, on fixed loopback ports: what answers is its
    own (the spendgate.local virtual host, the admin port). A generator for pytest fixtures:
    `yield from providerless(...)`; the log's tail is printed when the gateway stops."""
    g = Gateway(tmp, SimpleNamespace(port=0, ca_file=certifi.where()), upstream=False,
                extra_args=["--set", f"spendgate_admin_port={admin_port}"])
    g.port = proxy_port
    g.start()
    try:
        yield g
    finally:
        g.stop()
        print(g.log_text()[-log_tail:])
