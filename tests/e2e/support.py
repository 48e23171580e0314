"""Helpers shared by the e2e test files: request bodies, calls that create and teach a classifier, the CLI as
a subprocess, and a small load generator. Test files import from here, never from one another."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np

from tests.e2e.conftest import KEYS, Server, auth

PROBE = {"inputs": [{"vector": [0.0, 0.0, 0.0, 0.0]}, {"vector": [3.0, 3.0, 3.0, 3.0]}]}


def blobs(labels: dict[str, float], n: int = 12, seed: int = 0) -> list[dict[str, object]]:
    """``n`` 4-dim samples per label, scattered around the label's value."""
    rng = np.random.default_rng(seed)
    return [
        {"label": lab, "vector": (rng.normal(size=4) * 0.2 + c).tolist()} for lab, c in labels.items() for _ in range(n)
    ]


def create(c: httpx.Client, name: str, **extra: object) -> None:
    """A classifier of 4-dim vectors named ``name``."""
    r = c.post(
        "/v1/classifiers", headers=auth("admin"), json={"name": name, "input": {"kind": "vector", "dim": 4}, **extra}
    )
    assert r.status_code == 201, r.text


def learn(c: httpx.Client, name: str, body: dict[str, object]) -> str:
    """Start a learning job; its id."""
    r = c.post(f"/v1/classifiers/{name}/learn", json=body, headers=auth("learn"))
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def wait_status(c: httpx.Client, job_id: str, status: str, timeout: float = 60) -> dict[str, object]:
    """Poll the job until it reaches ``status`` (e.g. "running"), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}", headers=auth("learn")).json()
        if job["status"] == status:
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {status!r}")


def problem(r: httpx.Response, status: int, *words: str) -> None:
    """``r`` is a problem+json answer with ``status`` whose detail contains every one of ``words``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"]
    for w in words:
        assert w in body["detail"], body


def engram(srv: Server, *args: str, role: str = "admin") -> subprocess.CompletedProcess[str]:
    """The ``engram`` CLI against ``srv`` with the key of ``role``."""
    env = {**os.environ, "ENGRAM_URL": srv.url, "ENGRAM_KEY": KEYS[role], "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli.main", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


# A closed-loop HTTP/1.1 load generator: ``concurrency`` keep-alive connections, each sending its next request
# as soon as the previous answer arrives, for a fixed time. The minimal piece of ``benchmarks.loadgen`` the load
# test needs (the tests never import the benchmarks): raw asyncio streams and pre-encoded requests, so the
# client spends little CPU per request on the machine it shares with the server.


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    statuses: Counter[int] = field(default_factory=Counter)  # every answer
    errors: list[str] = field(default_factory=list)  # transport errors and non-200 answers (first 20 kept)
    error_count: int = 0
    sent: int = 0
    versions: Counter[int] = field(default_factory=Counter)  # "version" field of answers, when asked to read it

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def _encode_post(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


async def _drive(host: str, port: int, requests: list[bytes], concurrency: int, seconds: float,
                 read_version: bool) -> LoadResult:  # fmt: skip
    result = LoadResult(concurrency, seconds)
    end_at = time.perf_counter() + seconds

    async def connection(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        n = i
        try:
            while (start := time.perf_counter()) < end_at:
                writer.write(requests[n % len(requests)])
                n += concurrency
                result.sent += 1
                try:
                    status, body = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    result.error_count += 1
                    if len(result.errors) < 20:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                result.statuses[status] += 1
                if status != 200:
                    result.error_count += 1
                    if len(result.errors) < 20:
                        result.errors.append(f"{status}: {body[:300]!r}")
                    continue
                if read_version:
                    result.versions[json.loads(body)["version"]] += 1
                result.latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(concurrency)))
    return result


def run_load(url: str, path: str, bodies: list[bytes], concurrency: int, seconds: float,
             headers: dict[str, str] | None = None, read_version: bool = False) -> LoadResult:  # fmt: skip
    """POST the JSON ``bodies`` (round robin) to ``url`` + ``path`` from ``concurrency`` connections for
    ``seconds``."""
    host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
    reqs = [_encode_post(host, int(port), path, b, headers or {}) for b in bodies]
    return asyncio.run(_drive(host, int(port), reqs, concurrency, seconds, read_version))
