"""The ``engram`` CLI and the Python client against a real server: the README's quick start."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from service.client import EngramClient, EngramError
from tests.e2e.conftest import KEYS, Server, start_server, stop_server
from tests.e2e.support import engram

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("cli") / "data")
    yield s
    stop_server(s)


def image_folder(root: Path, classes: tuple[int, ...], n: int = 60) -> Path:
    d = load_digits()
    for c in classes:
        (root / str(c)).mkdir(parents=True)
        for i, img in enumerate(d.images[d.target == c][:n]):
            Image.fromarray(np.round(img * 255 / 16).astype(np.uint8)).resize((16, 16)).save(root / str(c) / f"{i}.png")
    return root


def test_quick_start_through_the_cli(srv: Server, tmp_path: Path) -> None:
    first, second = image_folder(tmp_path / "a", (0, 1)), image_folder(tmp_path / "b", (2, 3))
    out = engram(srv, "classifiers", "create", "digits", "--image", "1x8x8", "--backbone", "mlp")
    assert out.returncode == 0 and "created digits" in out.stdout, out.stdout + out.stderr
    for i, folder in enumerate((first, second), start=1):
        # generative replay named: the default (class models) takes no other strategy later, and EWC comes next
        out = engram(srv, "learn", "digits", str(folder), "--task", f"t{i}", "--retention", "discard",
                     "--strategy", "generative_replay", role="learn")  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"promoted, version {i}" in out.stdout and "train" in out.stdout  # the progress bar's stage
    files = [str(first / "0" / "1.png"), str(second / "3" / "2.png")]
    out = engram(srv, "predict", "digits", *files, role="predict")
    assert out.returncode == 0 and f"{files[0]}: 0 " in out.stdout and f"{files[1]}: 3 " in out.stdout, out.stdout
    out = engram(srv, "versions", "digits", role="predict")
    assert out.returncode == 0 and "active" in out.stdout and "retired" in out.stdout
    out = engram(srv, "rollback", "digits", "--reason", "cli test")
    assert out.returncode == 0 and "version 1 is active" in out.stdout, out.stdout
    out = engram(srv, "audit", "digits", role="learn")
    assert "rollback" in out.stdout and "cli test" in out.stdout
    out = engram(srv, "promote", "digits", "99")
    assert out.returncode == 2 and "404" in out.stdout
    out = engram(srv, "rollback", "digits", role="predict")
    assert out.returncode == 2 and "403" in out.stdout
    # EWC adding classes: rejected, with the reason in plain words, and a distinct exit code
    out = engram(
        srv,
        "learn",
        "digits",
        str(image_folder(tmp_path / "c", (4, 5))),
        "--task",
        "t3",
        "--strategy",
        "ewc",
        role="learn",
    )
    assert out.returncode == 3 and "rejected" in out.stdout and "cannot add classes" in out.stdout
    # the gate names the classes it forgot and the next step (data may be kept here: exemplar replay)
    assert "forgotten classes:" in out.stdout and "lost by the classifier" in out.stdout, out.stdout
    assert "next step: 'ewc' cannot add classes" in out.stdout and "strategy 'replay'" in out.stdout, out.stdout


def test_the_python_client(srv: Server, tmp_path: Path) -> None:
    with EngramClient(srv.url, KEYS["admin"]) as c:
        c.create_classifier("client", {"kind": "image", "channels": 1, "height": 8, "width": 8}, backbone="mlp")
        seen: list[str] = []
        job = c.wait(
            c.learn_folder("client", image_folder(tmp_path / "a", (0, 1)), "t1", "naive").job_id,
            lambda j: seen.append(j.status),
        )
        assert job.status == "promoted" and job.version == 1 and seen[-1] == "promoted"
        result = c.predict_files("client", [tmp_path / "a" / "1" / "0.png"], top_k=2)
        assert result.version == 1 and result.predictions[0].label == "1" and len(result.predictions[0].top_k) == 2
        assert [v.version for v in c.versions("client")] == [1]
        assert c.classifier("client").active_version == 1
        with pytest.raises(EngramError) as err:
            c.learn("client", "t2", "naive", [])
        assert err.value.status == 422 and "empty" in err.value.detail
    with pytest.raises(EngramError) as err, EngramClient("http://127.0.0.1:9", KEYS["admin"], timeout=2) as dead:
        dead.classifiers()
    assert err.value.status == 0 and "cannot reach" in str(err.value)


def test_metrics_and_request_logs(srv: Server, tmp_path: Path) -> None:
    # its own classifier and jobs: one promoted, one rejected (EWC adding classes), one predict of two images
    with EngramClient(srv.url, KEYS["admin"]) as c:
        c.create_classifier("metered", {"kind": "image", "channels": 1, "height": 8, "width": 8}, backbone="mlp")
        first = c.wait(c.learn_folder("metered", image_folder(tmp_path / "a", (0, 1), n=30), "t1", "naive").job_id)
        assert first.status == "promoted", first
        second = c.wait(c.learn_folder("metered", image_folder(tmp_path / "b", (2, 3), n=30), "t2", "ewc").job_id)
        assert second.status == "rejected", second
        pngs = [tmp_path / "a" / "0" / "0.png", tmp_path / "a" / "1" / "0.png"]
        assert len(c.predict_files("metered", pngs).predictions) == 2  # one request of two images
    r = httpx.get(f"{srv.url}/healthz", headers={"X-Request-ID": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"
    assert len(httpx.get(f"{srv.url}/healthz", headers={"X-Request-ID": "bad id!"}).headers["x-request-id"]) == 32
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # job outcomes are collected by the API's background loop
        text = httpx.get(f"{srv.url}/metrics").text
        if 'engram_job_outcomes_total{classifier="metered",outcome="rejected"} 1.0' in text:
            break
        time.sleep(0.5)
    assert 'engram_job_outcomes_total{classifier="metered",outcome="promoted"} 1.0' in text
    assert 'engram_job_outcomes_total{classifier="metered",outcome="rejected"} 1.0' in text
    assert 'engram_job_stage_seconds_count{stage="train"}' in text and 'stage="export"' in text
    assert 'engram_predict_seconds_count{classifier="metered",version="1"} 1.0' in text
    assert 'engram_predict_batch_size_bucket{classifier="metered",le="2.0"} 1.0' in text
    assert 'engram_active_version{classifier="metered"} 1.0' in text
    log = srv.log.read_text()
    lines = [line for line in log.splitlines() if '"event": "request"' in line]
    assert any('"request_id": "trace-123"' in line and '"status": 200' in line for line in lines)
    assert not any(k in log for k in KEYS.values())  # keys are never logged
    assert "image_b64" not in log  # nor sample data


def test_the_default_strategy_and_a_refused_switch_away_from_class_models(srv: Server, tmp_path: Path) -> None:
    out = engram(srv, "classifiers", "create", "defaults", "--image", "1x8x8")
    assert out.returncode == 0, out.stdout + out.stderr
    out = engram(srv, "learn", "defaults", str(image_folder(tmp_path / "a", (0, 1))), "--task", "t1", role="learn")
    assert out.returncode == 0 and "promoted, version 1" in out.stdout, out.stdout + out.stderr
    assert "closed-form" in out.stdout  # how training ended, as the report says
    with EngramClient(srv.url, KEYS["admin"]) as c:
        assert c.versions("defaults")[0].strategy == "class_models"
        with pytest.raises(EngramError) as err:
            c.learn_folder("defaults", image_folder(tmp_path / "b", (2, 3)), "t2", "generative_replay")
        assert err.value.status == 422 and "class_models" in err.value.detail


def test_client_commands_print_their_own_output_only_unless_verbose(srv: Server) -> None:
    # httpx logs each request at INFO; a client command shows its own messages, the log lines only with --verbose
    out = engram(srv, "classifiers", "create", "quiet", "--vector", "4")
    assert out.returncode == 0 and "created quiet" in out.stdout, out.stdout + out.stderr
    for args in (("classifiers", "list"), ("versions", "quiet"), ("audit", "quiet")):
        out = engram(srv, *args)
        assert out.returncode == 0, out.stdout + out.stderr
        both = out.stdout + out.stderr
        assert "HTTP Request" not in both and " INFO " not in both, both
    out = engram(srv, "classifiers", "list", "--verbose")
    assert out.returncode == 0 and "quiet" in out.stdout, out.stdout + out.stderr
    assert "INFO httpx HTTP Request: GET" in out.stderr and "/v1/classifiers" in out.stderr, out.stderr
