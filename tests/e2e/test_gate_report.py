"""The gate names the fix: a generative-replay job whose generator is starved (one VAE step per task) is
rejected, and its report names the forgotten classes, who lost them and a next step. A real server, HTTP
only; 8x8 digits as 64-dim vectors, 100 classifier steps a job. Cost: one server and three jobs, 80 s of wall
time on the 2 shared cores at a load average near 10 (44 s of CPU), most of it the worker's first torch use."""

from __future__ import annotations

import numpy as np
import pytest

from model_core.strategy_specs import SPECS
from tests.e2e.conftest import Server, auth
from tests.e2e.support import digit_vectors, finished, learn_starved

pytestmark = pytest.mark.timeout(300)
def test_a_starved_generator_is_rejected_with_the_forgotten_classes_and_the_fix(server: Server) -> None:
    client = server.client()
    first, second = learn_starved(client, "starved")
    assert first["status"] == "promoted", first
    assert second["status"] == "rejected", second
    report = second["report"]
    assert report["passed"] is False and any("zero-two" in f for f in report["failures"])

    # per-class rows: the old classes with before and after, the new ones with after only
    rows = {r["class"]: r for r in report["classes"]}
    assert set(rows) == {"0", "1", "2", "3", "4"}
    assert all(rows[c]["before"] is None and not rows[c]["forgotten"] for c in ("3", "4"))
    assert report["forgotten"] and set(report["forgotten"]) <= {"0", "1", "2"}
    for c in report["forgotten"]:
        row = rows[c]
        assert row["task"] == "zero-two" and row["before"] - row["after"] > row["tolerance"], row
        # the generator quality figure the strategy measured at train time, and the verdict drawn from it
        assert 0.0 <= row["replay_accuracy"] <= 1.0 and row["lost_by"] in ("generator", "classifier"), row
    # the one-step VAE's samples all look like one class to the parent: the others are the generator's loss
    assert any(rows[c]["lost_by"] == "generator" for c in report["forgotten"]), rows
    print("\n" + "\n".join(f"{c}: {rows[c]}" for c in sorted(rows)) + f"\nnext step: {report['next_step']}\n"
          f"seconds: {first['report']['seconds']}, {report['seconds']}")  # fmt: skip

    # the next step names the starved parameter and its default, and says where the fix must start
    default = SPECS["generative_replay"].defaults["generator_iterations"]
    assert report["next_step_request"] == {"params": {"generator_iterations": default}}
    assert f"generator_iterations {default} (its default; this job ran 1)" in report["next_step"]
    assert any(repr(c) in report["next_step"] for c in report["forgotten"])
    assert report["next_step"].startswith("the generator lost")

    # the version keeps the same report, for the dashboard and the CLI
    version = client.get(f"/v1/classifiers/starved/versions/{second['version']}", headers=auth("predict")).json()
    assert version["status"] == "rejected" and version["report"]["forgotten"] == report["forgotten"]
    assert version["report"]["next_step"] == report["next_step"]


def test_a_healthy_job_names_nothing(server: Server) -> None:
    """The same first task with the default generator: promoted, nothing forgotten, no next step."""
    client = server.client()
    r = client.post(
        "/v1/classifiers", headers=auth("admin"), json={"name": "healthy", "input": {"kind": "vector", "dim": 64}}
    )
    assert r.status_code == 201, r.text
    body = {"task": "zero-two", "strategy": "generative_replay", "retention": "discard",
            "options": {"iterations": 100}, "samples": digit_vectors((0, 1, 2))}  # fmt: skip
    job = finished(
        client, client.post("/v1/classifiers/healthy/learn", json=body, headers=auth("learn")).json()["job_id"]
    )
    report = job["report"]
    assert job["status"] == "promoted", job
    assert report["forgotten"] == [] and report["next_step"] is None
    assert [(r["class"], r["before"]) for r in report["classes"]] == [("0", None), ("1", None), ("2", None)]
    assert np.mean([r["after"] for r in report["classes"]]) >= 0.7
