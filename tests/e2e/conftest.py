"""A real ``engram serve`` subprocess on a free port, driven over HTTP only."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from service.domain.job_status import TERMINAL

READY_TIMEOUT_S = 180.0
KEYS = {"admin": "adm-secret-1", "learn": "lrn-secret-2", "predict": "prd-secret-3"}
# In the parallel run (pytest-xdist: one test process per core) each test process's server computes on one thread
# (torch and BLAS in its worker, ONNX Runtime's model runs), so that the two processes' servers do not fight
# for the same cores; the jobs here are small, where one thread is as fast. A test's own extra_env overrides.
ONE_CORE = {"OMP_NUM_THREADS": "1", "ENGRAM_ORT_THREADS": "1"} if "PYTEST_XDIST_WORKER" in os.environ else {}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    log_file: io.BufferedWriter
    _client: httpx.Client | None = None

    def client(self) -> httpx.Client:
        """One shared client per server, closed when the server stops."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=60)
        return self._client


def start_server(data_dir: Path, extra_env: dict[str, str] | None = None, *args: str) -> Server:
    port = free_port()
    log = data_dir.parent / f"serve-{port}.log"
    keys = ",".join(f"{r}:{k}" for r, k in KEYS.items())
    env = {**os.environ, "ENGRAM_API_KEYS": keys, **ONE_CORE, **(extra_env or {})}
    cmd = [sys.executable, "-m", "service.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port), *args]
    log_file = open(log, "wb")  # noqa: SIM115  (closed in stop_server)
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    # Generous: on a loaded 2-core machine running the suite in parallel a server's imports alone can take a
    # minute; a server that starts sooner is answered sooner.
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_file.close()
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return Server(url, data_dir, proc, log, log_file)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    log_file.close()
    raise RuntimeError(f"server did not become ready in {READY_TIMEOUT_S:.0f} s")


def stop_server(server: Server) -> None:
    if server._client is not None:
        server._client.close()
    server.proc.terminate()
    try:
        server.proc.wait(20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    server.log_file.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("engram") / "data")
    yield srv
    stop_server(srv)


def png_b64(image: np.ndarray) -> str:
    """An 8x8 digit (values 0..16) as a base64 PNG, as a client would send it."""
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300, poll: float = 0.1) -> dict[str, object]:
    """The job once it has ended, read every ``poll`` seconds (a job read is cheap; at 0.5 s each of the suite's
    waits, from 46 call sites, lost a quarter of a second on average after its job ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth("learn")).json()
        if job["status"] in TERMINAL:
            return job  # type: ignore[no-any-return]
        time.sleep(poll)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.images, d.target, test_size=0.3, stratify=d.target, random_state=0)
    return x_tr, y_tr, x_te, y_te
