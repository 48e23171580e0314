"""schemathesis against the service's own OpenAPI document, every operation, every check.

No 5xx, and every answer conforms to the document: its status code and content type are declared, its
body (problem+json for errors, each event of the SSE stream) validates against the declared schema, a
request that breaks the schema is refused and one without a key gets 401, OPTIONS and 405 answers list
exactly the path's methods, and a resource the stateful phase created can then be used.

Two checks are narrowed, in CONFIG below, to the operations where they cannot hold by design. Bounded
(examples per operation, fixed seed) and loopback only.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import EngramClient
from tests.e2e.conftest import KEYS, Server, start_server, stop_server
from tests.e2e.support import blobs

pytestmark = pytest.mark.timeout(600)

CONFIG = """
seed = 20261121
# One worker: with two, schemathesis' threads can hit CPython 3.11.7's thread-unsafe AST recursion counter
# (python/cpython#106905) while Hypothesis parses its own source, failing the run with a SystemError.
workers = 1
request-timeout = 30
generation.max-examples = 40
generation.database = "none"

[checks]
enabled = true  # all of them; only the two exceptions below are switched off, and only where stated

# The classifier the fixture trained, so that these reach their logic instead of a 404 for a random name.
# (Not learn: a request that happens to be valid would start a training job on the test's two cores.)
[[operations]]
include-path = ["/v1/classifiers/{name}/predict", "/v1/classifiers/{name}/predict/binary",
                "/v1/classifiers/{name}/rollback", "/v1/classifiers/{name}/versions/{number}/promote"]
parameters = { "path.name" = "v" }

# positive_data_acceptance expects 2xx for every request the schema allows. These operations also check
# what JSON Schema cannot state, and answer 422 with what to change: the backbone must suit the input kind
# (create), and each sample or input must decode as an image, or be a vector of exactly the classifier's
# dim, whichever the classifier takes (learn, predict); learn also needs 2 samples per class to hold out.
# predict/binary's body is an .npy array of the classifier's shape or image files, which "binary" cannot state.
[[operations]]
include-path = ["/v1/classifiers", "/v1/classifiers/{name}/learn", "/v1/classifiers/{name}/predict",
                "/v1/classifiers/{name}/predict/binary"]
include-method = "POST"
checks.positive_data_acceptance.enabled = false

# ensure_resource_availability reads a 404 after a create as "the created resource is missing". Here the
# 404 names a version given in the body (predict's version, rollback's to_version) that does not exist;
# the classifier the stateful phase just created is there. (predict/binary: its version query parameter.)
[[operations]]
include-path = ["/v1/classifiers/{name}/predict", "/v1/classifiers/{name}/predict/binary",
                "/v1/classifiers/{name}/rollback"]
checks.ensure_resource_availability.enabled = false
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("fuzz") / "data")
    with EngramClient(s.url, KEYS["admin"]) as c:  # something for the operations to find
        c.create_classifier("v", {"kind": "vector", "dim": 4})
        assert c.wait(c.learn("v", "t", "naive", blobs({"x": 0, "y": 3})).job_id).status == "promoted"
    yield s
    stop_server(s)


def run_schemathesis(url: str, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config.write_text(CONFIG)
    st = Path(sys.executable).parent / "schemathesis"
    cmd = [str(st), "--config-file", str(config), "run", f"{url}/schema/openapi.json",
           "-H", f"Authorization: Bearer {KEYS['admin']}", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=500, check=False, cwd=config.parent)


def test_every_operation_conforms_to_the_document(srv: Server, tmp_path: Path) -> None:
    proc = run_schemathesis(srv.url, tmp_path / "schemathesis.toml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):  # each ran and passed, none was skipped
        assert f"✅ {phase}" in out, out[-3000:]
    assert "Traceback" not in srv.log.read_text()
    summary = out[out.rfind("Test cases:") :].splitlines()[:3] if "Test cases:" in out else out.splitlines()[-8:]
    print("\nschemathesis:", " ".join(line.strip() for line in summary))
