"""schemathesis against the service's own OpenAPI document, every operation: no 5xx.

Bounded (examples per operation, fixed seed) and loopback only. Schema conformance of 4xx bodies is not
asserted yet: the error responses are not declared in the OpenAPI document (see issue: serving speed).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import EngramClient
from tests.e2e.conftest import KEYS, Server, start_server, stop_server
from tests.e2e.test_durability import blobs

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("fuzz") / "data")
    with EngramClient(s.url, KEYS["admin"]) as c:  # something for the operations to find
        c.create_classifier("v", {"kind": "vector", "dim": 4})
        assert c.wait(c.learn("v", "t", "naive", blobs({"x": 0, "y": 3})).job_id).status == "promoted"
    yield s
    stop_server(s)


def test_no_operation_answers_5xx(srv: Server) -> None:
    st = Path(sys.executable).parent / "schemathesis"
    cmd = [str(st), "run", f"{srv.url}/schema/openapi.json", "-H", f"Authorization: Bearer {KEYS['admin']}",
           "--checks", "not_a_server_error", "--max-examples", "40", "--seed", "20261121", "--workers", "2",
           "--request-timeout", "30"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ST101" not in out, out[-4000:]
    assert "Traceback" not in srv.log.read_text()
