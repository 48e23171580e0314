"""One int8 graph per backbone in a deployment (service.jobs.int8, Settings.int8_calibration): a classifier's first
job takes the int8 graph another classifier on the same frozen backbone, with the same quantization settings, was
calibrated with, rather than quantize its own; with "classifier" calibration, or other settings, it quantizes its
own; a graph the store no longer holds is passed over.

In process: the application services (SQLite) stage each learn request and a ``JobRunner`` with int8 on runs it,
as the worker does. 8x8 digits as PNGs on the packaged pretrained photo backbone at 32 px in its graph: about 15 s in
all, four quantizations among them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from model_core.checkpoint import read_manifest
from model_core.quantize import QuantConfig
from service.jobs.int8 import INT8
from service.jobs.training import JobRunner
from service.persistence.models import Version
from service.settings import Settings
from tests.integration.test_content_store import Engram

pytestmark = pytest.mark.timeout(600)
# the packaged pretrained photo backbone, frozen, at 32 px in the graph (a small graph: quick to quantize)
FROZEN = {"name": "timm/efficientnet_lite0", "resolution": 32}


class Int8Engram(Engram):
    def __init__(self, data: Path, shared: bool = True, config: QuantConfig | None = None) -> None:
        super().__init__(data)
        self.runner = JobRunner(self.sessions, self.store, "cpu", cache_dir=data / "cache", int8=True,
                                int8_shared=shared, int8_config=config)  # fmt: skip

    def create(self, name: str) -> None:
        from service.domain.commands import NewClassifier

        self.service.classifiers.create_classifier(NewClassifier(
            name, {"kind": "image", "channels": 1, "height": 8, "width": 8}, backbone=FROZEN,
            gate={"tolerance": 1.0, "new_task_floor": 0.0}))  # fmt: skip

    def int8_of(self, version: Version) -> tuple[dict[str, object], dict[str, object]]:
        """(the version's manifest int8 reference, its report's int8 section)."""
        ref = read_manifest(self.folder(version)).references[INT8]
        return ref, version.report[INT8]


def test_a_classifiers_first_job_takes_the_int8_graph_of_its_backbone(tmp_path: Path) -> None:
    engram = Int8Engram(tmp_path / "data")
    engram.create("a")
    first = engram.learn("a", "t1", (0, 1))
    ref_a, report_a = engram.int8_of(first)
    assert ref_a["base"] and ref_a["config"] and "shared" not in report_a["quantization"]
    assert "int8-quantize" in first.report["seconds"]
    engram.create("b")
    other = engram.learn("b", "t1", (5, 6, 7))  # other photos: its own calibration would differ
    ref_b, report_b = engram.int8_of(other)
    assert (ref_b["sha256"], ref_b["digest"], ref_b["base"], ref_b["config"]) == \
        (ref_a["sha256"], ref_a["digest"], ref_a["base"], ref_a["config"])  # fmt: skip
    assert report_b["quantization"] == {"shared": True, "config": ref_a["config"]}
    assert report_b["samples"] > 0 and "serve_int8" in report_b  # checked on its own evaluation samples
    later = engram.learn("b", "t2", (8, 9))  # and its later jobs inherit it, as any classifier's do
    assert engram.int8_of(later)[0]["sha256"] == ref_a["sha256"]

    # with other quantization settings, or calibration per classifier, a first job quantizes its own graph
    other_settings = Int8Engram(tmp_path / "data", config=QuantConfig(float_nodes=()))
    other_settings.create("c")
    ref_c, report_c = other_settings.int8_of(other_settings.learn("c", "t1", (5, 6, 7)))
    assert ref_c["config"] != ref_a["config"] and "shared" not in report_c["quantization"]
    own = Int8Engram(tmp_path / "data", shared=False)
    own.create("d")
    ref_d, report_d = own.int8_of(own.learn("d", "t1", (5, 6, 7)))
    assert ref_d["config"] == ref_a["config"] and ref_d["digest"] != ref_a["digest"]
    assert "shared" not in report_d["quantization"]

    # a graph gone from the store (its classifiers deleted and the store collected) is passed over for the next
    # that fits, and with none left the job quantizes (on the same photos as d's: d's very graph)
    engram.store.remove_content(str(ref_a["sha256"]))
    engram.create("e")
    ref_e, report_e = engram.int8_of(engram.learn("e", "t1", (2, 3)))
    assert ref_e["sha256"] == ref_d["sha256"] and report_e["quantization"]["shared"]
    engram.store.remove_content(str(ref_d["sha256"]))
    engram.create("f")
    ref_f, report_f = engram.int8_of(engram.learn("f", "t1", (5, 6, 7)))
    assert "shared" not in report_f["quantization"] and ref_f["digest"] == ref_d["digest"]


def test_calibration_is_per_deployment_by_default() -> None:
    assert Settings().int8_calibration == "deployment"
