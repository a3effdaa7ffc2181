"""Real servers the end-to-end tests start on 127.0.0.1 and stop by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop a server started with ``start_new_session=True``: its whole process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


class MlflowServer:
    """``mlflow server --workers 1`` on 127.0.0.1; `stop` and `start` keep port and store.

    Given a migrated `template` store (the ``mlflow_template`` fixture), the
    server starts on a copy of it instead of migrating a new one.
    """

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        template: Path | None = None,
        backend_uri: str | None = None,
    ) -> None:
        self.root = root
        self.port = port or free_port()
        if template is not None:
            shutil.copyfile(template, root / "server.db")
        #: The tracking store: the sqlite file under `root`, or e.g. a PostgreSQL URI.
        self.backend_uri = backend_uri or f"sqlite:///{root / 'server.db'}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MlflowServer:
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        # `python -m mlflow`, not bin/mlflow: a venv layered over another one
        # (a worktree's) runs MLflow from the other one and has no console script.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                self.backend_uri,
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            env=env,
            stdout=open(self.root / "server.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() takes the whole tree
        )
        wait_http(f"{self.url}/health", timeout=90, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        self.proc = None


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (``initdb`` + ``postgres``), stopped by PID.

    PostgreSQL refuses to run as root: as root the cluster belongs to the
    ``postgres`` user (``nobody`` when there is none), and its folder is made
    under the system temp dir, which that user can reach. Connections from
    127.0.0.1 are trusted (a test cluster, bound to loopback only).
    """

    def __init__(self, user: str = "tracelet") -> None:
        import tempfile

        self.user = user
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tracelet-pg-"))
        self.data = self.root / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as: str | None = None
        if os.getuid() == 0:
            import pwd

            names = {p.pw_name for p in pwd.getpwall()}
            self._run_as = "postgres" if "postgres" in names else "nobody"
            os.chown(self.root, pwd.getpwnam(self._run_as).pw_uid, -1)

    def uri(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def sqlalchemy_uri(self, database: str) -> str:
        """The URI for SQLAlchemy (MLflow's store): the psycopg2 driver named."""
        return self.uri(database).replace("postgresql://", "postgresql+psycopg2://", 1)

    def _popen(self, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, user=self._run_as, cwd=self.root, **kw)  # type: ignore[call-overload]

    def start(self) -> PostgresServer:
        initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
        if initdb is None or postgres is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        log = open(self.root / "server.log", "ab")
        init = self._popen(
            [initdb, "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if init.wait(timeout=120) != 0:
            raise RuntimeError(f"initdb failed: {(self.root / 'server.log').read_text()[-2000:]}")
        self.proc = self._popen(
            [
                postgres,
                "-D",
                str(self.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "fsync=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("postgres did not accept connections within 60 s")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self.uri("postgres"), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def create_database(self, name: str) -> str:
        """Create database `name`; return its SQLAlchemy URI."""
        import psycopg2

        conn = psycopg2.connect(self.uri("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.sqlalchemy_uri(name)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
