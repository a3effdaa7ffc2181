"""A real Prometheus server (Debian's ``prometheus`` package) on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests._servers import free_port, stop_group, wait_http


class PrometheusServer:
    """``prometheus --config.file=<config>`` with its storage in `root`."""

    def __init__(self, root: Path, config: Path) -> None:
        self.root = root
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("prometheus")

    def start(self) -> PrometheusServer:
        binary = self.binary()
        assert binary, "prometheus is not installed (scripts/install-system-deps.sh)"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=open(self.root / "prometheus.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.url}/-/ready", timeout=60, proc=self.proc)
        return self

    def query(self, expr: str) -> dict[str, Any]:
        """The JSON answer of ``/api/v1/query`` for `expr` (status and data)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 400 for a bad expression: keep its answer
            return json.loads(exc.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=30)
        self.proc = None
