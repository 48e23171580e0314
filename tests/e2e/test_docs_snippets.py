"""The documentation's Python examples, run as written against a real server: the vector classifier of
docs/getting-started/vectors.md and the CSV reader of docs/getting-started/folders-and-csv.md (only the server's
address and the keys are replaced by the test server's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import KEYS, Server, start_server, stop_server
from tests.e2e.support import engram

pytestmark = pytest.mark.timeout(600)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "getting-started"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("snippets") / "data")
    yield s
    stop_server(s)


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def run_snippet(srv: Server, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = code.replace("http://127.0.0.1:8000", srv.url)
    for role, key in KEYS.items():
        code = code.replace(f"change-me-{role}", key)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def test_the_vector_and_csv_examples_run_as_written(srv: Server, tmp_path: Path) -> None:
    # the page's own command creates the classifier its Python example teaches
    assert "engram classifiers create sensors --vector 4" in (DOCS / "vectors.md").read_text()
    out = engram(srv, "classifiers", "create", "sensors", "--vector", "4")
    assert out.returncode == 0, out.stdout + out.stderr
    [vectors] = python_blocks(DOCS / "vectors.md")
    proc = run_snippet(srv, vectors, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status, accuracy = proc.stdout.splitlines()[0].split()
    assert status == "promoted" and float(accuracy) > 0.9, proc.stdout
    prediction = proc.stdout.splitlines()[1]  # [3, 3, 3, 3] is at the centre of "running"
    assert prediction.startswith("label='running'") and "known=True" in prediction, proc.stdout

    # a CSV with a label column and one column per feature, as the page describes, taught as a second task
    rng = np.random.default_rng(0)
    rows = ["label,a,b,c,d"] + [
        f"{label},{','.join(f'{v:.3f}' for v in rng.normal(centre, 0.2, 4))}"
        for label, centre in (("braking", -2.0), ("turning", 6.0)) for _ in range(20)
    ]  # fmt: skip
    (tmp_path / "readings.csv").write_text("\n".join(rows) + "\n")
    [csv_example] = python_blocks(DOCS / "folders-and-csv.md")
    proc = run_snippet(srv, csv_example, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "promoted", proc.stdout
    out = engram(srv, "versions", "sensors", role="predict")
    assert out.returncode == 0 and "2" in out.stdout and "active" in out.stdout, out.stdout
