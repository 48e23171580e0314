"""Faults and restarts: a killed worker, a restarted server, cancels, manual approval, forced promotion."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import Server, auth, start_server, stop_server, wait_job
from tests.e2e.support import PROBE, blobs, create, learn, wait_status

pytestmark = pytest.mark.timeout(600)
FAST_REAP = {"ENGRAM_STALE_AFTER_SECONDS": "4", "ENGRAM_HEARTBEAT_SECONDS": "0.5"}
LONG = {"iterations": 100_000}  # minutes of training: time to kill or cancel it


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    holder = {"server": start_server(tmp_path_factory.mktemp("durable") / "data", FAST_REAP)}
    yield holder["server"]
    stop_server(holder["server"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped) counts as gone
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_killed_worker_fails_its_job_and_serving_goes_on(srv: Server) -> None:
    c = srv.client()
    create(c, "k")
    first = learn(c, "k", {"task": "a", "strategy": "naive", "samples": blobs({"x": 0, "y": 3})})
    assert wait_job(c, first)["status"] == "promoted"
    before = c.post("/v1/classifiers/k/predict", json=PROBE, headers=auth("predict")).json()
    job_id = learn(c, "k", {"task": "b", "strategy": "generative_replay", "retention": "discard",
                            "samples": blobs({"z": -3, "w": 6}), "options": LONG})  # fmt: skip
    job = wait_status(c, job_id, "running")
    killed = str(job["worker"])
    os.kill(int(killed.split(":")[1]), signal.SIGKILL)
    answers = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # predictions keep working while the job is found dead
        answers.append(c.post("/v1/classifiers/k/predict", json=PROBE, headers=auth("predict")))
        job = c.get(f"/v1/jobs/{job_id}", headers=auth("learn")).json()
        if job["status"] != "running":
            break
        time.sleep(0.2)
    assert job["status"] == "failed", job
    assert "worker stopped responding" in str(job["error"])
    assert len(answers) > 3 and all(a.status_code == 200 and a.json() == before for a in answers)
    assert c.get("/v1/classifiers/k", headers=auth("predict")).json()["active_version"] == 1
    assert not (srv.data_dir / "artifacts" / "jobs" / job_id).exists()  # its discarded samples are gone
    # the server started a new worker, which takes the next job
    create(c, "k2")
    nxt = wait_job(c, learn(c, "k2", {"task": "a", "strategy": "naive", "samples": blobs({"x": 0, "y": 3})}))
    assert nxt["status"] == "promoted" and nxt["worker"] != killed


def test_cancel_a_running_job_while_streaming_its_events(srv: Server) -> None:
    c = srv.client()
    create(c, "cx")
    job_id = learn(c, "cx", {"task": "a", "strategy": "naive", "samples": blobs({"x": 0, "y": 3}), "options": LONG})
    events: list[tuple[str, dict[str, object]]] = []
    cancelled = False
    with httpx.stream("GET", f"{srv.url}/v1/jobs/{job_id}/events", headers=auth("learn"), timeout=60) as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind:
                events.append((kind, json.loads(line.split(":", 1)[1])))
                state = events[-1][1]
                if not cancelled and state["status"] == "running" and state["progress"]:
                    assert c.post(f"/v1/jobs/{job_id}/cancel", headers=auth("learn")).status_code == 200
                    cancelled = True
    assert events[-1][0] == "end" and events[-1][1]["status"] == "cancelled"
    assert any(k == "progress" and e["progress"] for k, e in events)
    assert c.get("/v1/classifiers/cx", headers=auth("predict")).json()["active_version"] is None
    assert c.post(f"/v1/jobs/{job_id}/cancel", headers=auth("learn")).status_code == 409


def test_manual_approval_and_forced_promotion_are_audited(srv: Server) -> None:
    c = srv.client()
    create(c, "m", gate={"manual_approval": True})
    job = wait_job(c, learn(c, "m", {"task": "a", "strategy": "naive", "samples": blobs({"x": 0, "y": 3})}))
    assert job["status"] == "passed" and job["version"] == 1
    assert c.get("/v1/classifiers/m/versions/1", headers=auth("predict")).json()["status"] == "candidate"
    assert c.post("/v1/classifiers/m/predict", json=PROBE, headers=auth("predict")).status_code == 409
    assert c.post("/v1/classifiers/m/versions/1/promote", headers=auth("admin"), json={}).status_code == 200
    assert c.post("/v1/classifiers/m/predict", json=PROBE, headers=auth("predict")).json()["version"] == 1
    # EWC adding classes fails the gate; promoting it anyway needs force and a reason
    body = {"task": "b", "strategy": "ewc", "samples": blobs({"z": -3, "w": 6})}
    job = wait_job(c, learn(c, "m", body))
    assert job["status"] == "rejected", job
    r = c.post("/v1/classifiers/m/versions/2/promote", headers=auth("admin"), json={"force": True})
    assert r.status_code == 409 and "reason" in r.json()["detail"]
    r = c.post("/v1/classifiers/m/versions/2/promote", headers=auth("admin"), json={"force": True, "reason": "demo"})
    assert r.status_code == 200 and r.json()["status"] == "active"
    audit = c.get("/v1/classifiers/m/audit", headers=auth("learn")).json()
    assert [(a["action"], a["to_version"], a["forced"]) for a in audit] == [("promote", 1, False), ("promote", 2, True)]
    assert audit[1]["reason"] == "demo"


def test_multipart_upload_learns_like_json(srv: Server) -> None:
    c = srv.client()
    r = c.post("/v1/classifiers", headers=auth("admin"),
               json={"name": "mp", "input": {"kind": "image", "channels": 1, "height": 8, "width": 8}, "backbone": "mlp"})  # fmt: skip
    assert r.status_code == 201
    files: list[tuple[str, tuple[str | None, bytes | str, str | None]]] = []
    pngs = []
    for i in range(20):
        img = np.zeros((16, 16), np.uint8)  # 16x16: resized to 8x8 on the way in
        img[:, : 8 if i % 2 else 16] = 255 if i % 2 else 0
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        pngs.append(buf.getvalue())
        files.append(("file", (f"{i}.png", buf.getvalue(), "image/png")))
        files.append(("label", (None, "left" if i % 2 else "blank", None)))
    r = c.post("/v1/classifiers/mp/learn", headers=auth("learn"), data={"task": "lr", "strategy": "naive"}, files=files)
    assert r.status_code == 202, r.text
    assert wait_job(c, r.json()["job_id"])["status"] == "promoted"
    probe = {"inputs": [{"image_b64": base64.b64encode(pngs[1]).decode()}]}
    assert (
        c.post("/v1/classifiers/mp/predict", json=probe, headers=auth("predict")).json()["predictions"][0]["label"]
        == "left"
    )


def test_a_restart_loses_nothing(srv: Server) -> None:
    c = srv.client()
    create(c, "restart", gate={"tolerance": 1, "new_task_floor": 0})  # its own classifier: runs alone too; naive forgets, the gate lets it
    for k, labels in enumerate(({"x": 0, "y": 3}, {"z": -3, "w": 6})):
        job = wait_job(c, learn(c, "restart", {"task": f"t{k}", "strategy": "naive", "samples": blobs(labels)}))
        assert job["status"] == "promoted", job
    classifiers = c.get("/v1/classifiers", headers=auth("predict")).json()
    versions = c.get("/v1/classifiers/restart/versions", headers=auth("predict")).json()
    jobs = [c.get(f"/v1/jobs/{v['job_id']}", headers=auth("learn")).json() for v in versions]
    answer = c.post("/v1/classifiers/restart/predict", json=PROBE, headers=auth("predict")).json()
    worker_pid = int(str(jobs[-1]["worker"]).split(":")[1])
    stop_server(srv)
    deadline = time.monotonic() + 15  # the embedded worker goes with its server
    while time.monotonic() < deadline and pid_alive(worker_pid):
        time.sleep(0.2)
    assert not pid_alive(worker_pid), "the worker outlived its server"
    again = start_server(srv.data_dir, FAST_REAP)
    try:
        c2 = again.client()
        assert c2.get("/v1/classifiers", headers=auth("predict")).json() == classifiers
        assert c2.get("/v1/classifiers/restart/versions", headers=auth("predict")).json() == versions
        assert [c2.get(f"/v1/jobs/{v['job_id']}", headers=auth("learn")).json() for v in versions] == jobs
        assert c2.post("/v1/classifiers/restart/predict", json=PROBE, headers=auth("predict")).json() == answer
    finally:
        stop_server(again)
        srv.proc, srv.log_file, srv._client = again.proc, again.log_file, None  # the fixture's stop is then a no-op
