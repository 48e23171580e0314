"""A small closed-loop HTTP/1.1 load generator: ``concurrency`` keep-alive connections, each sending its
next request as soon as the previous answer arrives, for a fixed time.

Raw asyncio streams with pre-encoded requests, so the client spends as little CPU as possible per request
(it shares the machine with the server it measures). In the package so that the serving benchmarks
(``benchmarks.serve_bench``, ``binary_bench``, ``workers_bench``) and the load test in ``tests/e2e`` drive the
service with the same code.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    seconds: float  # measured window
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests in the window
    statuses: Counter[int] = field(default_factory=Counter)  # every answer, window or not
    errors: list[str] = field(default_factory=list)  # transport errors and non-200 answers (first 20 kept)
    error_count: int = 0
    sent: int = 0
    versions: Counter[int] = field(default_factory=Counter)  # "version" field of answers, when asked to read it

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "seconds": round(self.seconds, 2), "requests": len(self.latencies),
                "sent": self.sent, "errors": self.error_count, "rps": round(self.rps, 1),
                "p50_ms": round(self.percentile(50) * 1000, 2), "p95_ms": round(self.percentile(95) * 1000, 2),
                "p99_ms": round(self.percentile(99) * 1000, 2)}  # fmt: skip


def encode_post(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
                content_type: str = "application/json") -> bytes:  # fmt: skip
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]  # fmt: skip
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


async def drive(
    host: str,
    port: int,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    warmup: float = 0.0,
    read_version: bool = False,
) -> LoadResult:
    """Send pre-encoded ``requests`` (round robin) from ``concurrency`` connections for ``warmup`` +
    ``seconds``; latencies count only answers that started after the warm-up."""
    result = LoadResult(concurrency, seconds)
    t0 = time.perf_counter()
    window = (t0 + warmup, t0 + warmup + seconds)

    async def connection(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        n = i
        try:
            while True:
                start = time.perf_counter()
                if start >= window[1]:
                    return
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
                end = time.perf_counter()
                result.statuses[status] += 1
                if status != 200:
                    result.error_count += 1
                    if len(result.errors) < 20:
                        result.errors.append(f"{status}: {body[:300]!r}")
                    continue
                if read_version:
                    result.versions[json.loads(body)["version"]] += 1
                if start >= window[0] and end <= window[1]:  # wholly inside the measured window
                    result.latencies.append(end - start)
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(concurrency)))
    return result


def run_load(
    url: str,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    seconds: float,
    warmup: float = 0.0,
    headers: dict[str, str] | None = None,
    read_version: bool = False,
    content_type: str = "application/json",
) -> LoadResult:
    """Synchronous entry point: POST ``bodies`` (JSON unless ``content_type`` says otherwise) to ``url`` + ``path``."""
    hostport = url.split("://", 1)[1].rstrip("/")
    host, _, port = hostport.partition(":")
    reqs = [encode_post(host, int(port), path, b, headers, content_type) for b in bodies]
    return asyncio.run(drive(host, int(port), reqs, concurrency, seconds, warmup, read_version))
