"""The verdict table: every stream through the real service, its defaults, its holdout and its gate.

    python -m benchmarks.gate_truth [--streams digits-5x2,digits-10x1,mnist-5x2,cifar-5x2,cifar-10x1,cifar-5x2u,
        cifar-catdog,banking77-8,banking77-20x1]
        [--strategies default,joint,replay,generative_replay,analytic,class_models,naive,ewc,lwf,mas]
        [--test-per-class N] [--seed N] [--backbone NAME] [--json FILE]
        [--per-class N] [--shuffle-first] [--rename OLD:NEW[:BESIDE]]

Few-shot: ``--per-class N`` sends only N samples of each class (seeded), the gate holding out its 20% of them;
``digits-2x5`` / ``mnist-2x5`` are tasks of 5 classes. ``--shuffle-first`` shuffles the first task's labels
(a deliberately broken candidate: the gate should reject it, and the stream goes on from nothing).
``--rename cat:kitty`` keeps half of class ``cat``'s training samples in its task and sends the other half as
``kitty`` in a last task of its own (an old class under another name: the gate should refuse it);
``--rename cat:kitty:automobile`` sends ``kitty`` beside ``automobile``, taken out of its own task (a new, easy
class in the same job). The
table's ``default`` row names what the first job chose and its candidates' scores. The ``lr`` column is an
offline logistic regression on the same inputs, fitted on every training sample the stream sends (with
``--per-class``, the same few a class) at once.

Starts ``engram serve`` (embedded SQLite, one local worker, CPU unless ENGRAM_DEVICE says otherwise) on a fresh
data folder and, for each stream and strategy, creates a class-incremental classifier with the service's
default backbone for the input and teaches it the stream's tasks over HTTP, one job at a time, exactly as a
user would: default options, the gate's own 20% holdout, ``retention`` ``discard`` for strategies that keep no
sample and ``keep`` for those that do. After each task it scores the version the service then serves (the
promoted one, or the previous one when the gate rejected the candidate) on held-out samples of every class
seen so far, over HTTP. Prints per stream and strategy: each task's verdict (P promoted, R rejected, F
failed), the served accuracy after each task, and the worker's seconds per task with the gate's share. Where
the served version has a novelty score, a second table: how well its served ``novelty`` tells held-out samples
of the classes learned so far (known) from those of the classes still to come (unknown) after each task but
the last (AUROC), the share of known samples it calls ``known`` and the share of unknown ones it flags.

Streams (held-out samples are never sent to learn):
- ``digits-5x2`` / ``digits-10x1``: scikit-learn's 8x8 digits as PNG, a seeded 30% of each class held out;
- ``mnist-5x2``: ``../shared/data/mnist-5k`` (28x28), a seeded 30% of each class held out;
- ``cifar-5x2`` / ``cifar-10x1``: ``../shared/data/cifar10-mini`` photos as JPEG, ``train/`` to learn,
  ``test/`` to score; ``cifar-5x2u``: the same 5 tasks of 2 with 5x unequal sizes, the first task's classes
  sent with their first 100 photos each, every later class with all of its (about 500); ``cifar-5x2f``: every
  class with its first 100 photos (the equal stream on the very photos ``cifar-5x2u``'s first task sends); ``cifar-catdog``: cat
  with dog in the first task, the other 8 classes in pairs after it (two hard classes learnt together); any other
  stream with a ``u`` after its shape (``digits-5x2u``, ``mnist-5x2u``, ``banking77-8u``) sends its first task's
  classes with the first fifth of their training samples, the later tasks whole; an ``f`` instead sends every
  class with the first fifth of its samples (``digits-5x2f``: the same first task as ``digits-5x2u``, and later
  tasks as small, the equal stream to hold the unequal one against on the very samples its first task had);
- ``banking77-8`` / ``banking77-20x1``: ``../shared/data/banking77`` utterances as 384-value sentence embeddings
  (``benchmarks.embeddings``: all-MiniLM-L6-v2, computed once and cached outside the repository) sent as vectors
  to a classifier that declares them features (backbone ``identity``; ``--backbone`` overrides it), 77 intents
  in 8 tasks (10 a task, the last 7), or one intent a task for the first 20 intents; its ``test.csv`` to score.

Beside every row: ``lr``, an offline logistic regression (scikit-learn, standardised inputs) on the same inputs
fitted on every training sample of the stream's classes at once (the ceiling: the joint, non-incremental
linear probe), on the inputs as given for vectors and grey pixels, and for photos on the frozen features the
service's default backbone computes from exactly the photos sent (``photo_features``: the backbone's fp32 ONNX
graph, run here in process); and ``ece``, the expected calibration error of
the served score (the top softmax probability the API returns) on the held-out samples after the last task
(``model_core.calibration.expected_calibration_error``), with the largest after any task: on the samples of the
classes the served version has learnt (after a rejected task, not the rejected classes, which the version still
served never learnt; the JSON's ``ece_all`` counts them too).
A stream whose data are absent is skipped with a line saying so. ``--seed N`` (default 0: the classes in their
natural order, 0-9 and CIFAR-10's alphabetical order) shuffles the classes with seed N before they are cut into
tasks, and seeds the held-out split of the grey streams: other tasks, other confusions between old and new.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.novelty import auroc
from benchmarks.serve_bench import engram_server
from model_core.data import load_digits_arrays, mnist_5k_arrays, stratified_split
from model_core.strategy_specs import SPECS, default_candidates
from service.domain.job_status import TERMINAL

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
# "default": the request names no strategy, so the service picks the classifier's default (default_strategy)
STRATEGIES = ("default", "joint", "replay", "generative_replay", "analytic", "class_models", "naive", "ewc", "lwf", "mas")
STREAMS = ("digits-5x2", "digits-10x1", "mnist-5x2", "cifar-5x2", "cifar-10x1", "cifar-5x2u", "cifar-catdog",
           "banking77-8", "banking77-20x1")
# the exemplar-free strategies the first job's choice is held against: its candidates, and the regularisers that
# keep no sample either (they add no classes of their own, so they are not candidates)
EXEMPLAR_FREE = {*default_candidates({}), "ewc", "lwf", "mas"}
KEEPS_DATA = {name for name, spec in SPECS.items() if spec.stores_data}  # sent with retention "keep"


Payload = str | list[float]  # a base64 image, or a vector


@dataclass
class Stream:
    name: str
    input: dict[str, Any]
    tasks: list[list[str]]  # class names of each task, in order
    train: list[tuple[str, Payload]]  # (label, base64 image or vector)
    test: list[tuple[str, Payload]]
    backbone: str | None = None  # None: the service's default for the input
    # (train x, train labels, test x, test labels) as a linear probe reads them; None: not available here
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def _field(payload: Payload) -> dict[str, Any]:
    return {"vector": payload} if isinstance(payload, list) else {"image_b64": payload}


def _png(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _tasks(classes: list[str], per_task: int, seed: int) -> list[list[str]]:
    """The classes cut into tasks of ``per_task``, in their order (seed 0) or shuffled with ``seed``."""
    if seed:
        classes = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    return [classes[i : i + per_task] for i in range(0, len(classes), per_task)]


def _grey(name: str, images: np.ndarray, labels: np.ndarray, per_task: int, seed: int) -> Stream:
    train, test = stratified_split(labels, 0.3, seed=seed)
    items = [(str(int(labels[i])), _png(images[i])) for i in range(len(labels))]
    side = images.shape[1]
    flat = images.reshape(len(images), -1).astype(np.float32)
    return Stream(name, {"kind": "image", "channels": 1, "height": side, "width": side},
                  _tasks([str(c) for c in range(10)], per_task, seed),
                  [items[i] for i in train], [items[i] for i in test],
                  arrays=(flat[train], labels[train].astype(str), flat[test], labels[test].astype(str)))  # fmt: skip


def _banking77(name: str, per_task: int, first: int | None, seed: int) -> Stream | str:
    from benchmarks.embeddings import banking77_arrays

    try:
        data = banking77_arrays()
    except FileNotFoundError as exc:
        return str(exc)
    classes = [str(c) for c in data["classes"]]
    if seed:
        classes = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    classes = classes[:first] if first else classes
    tasks = [classes[i : i + per_task] for i in range(0, len(classes), per_task)]
    keep = set(classes)

    def rows(x: np.ndarray, y: np.ndarray) -> list[tuple[str, Payload]]:
        return [(str(data["classes"][k]), [float(v) for v in row]) for row, k in zip(x, y, strict=True)
                if str(data["classes"][k]) in keep]  # fmt: skip

    names = data["classes"].astype(str)
    tr, te = np.isin(names[data["train_y"]], classes), np.isin(names[data["test_y"]], classes)
    return Stream(name, {"kind": "vector", "dim": int(data["train_x"].shape[1])}, tasks,
                  rows(data["train_x"], data["train_y"]), rows(data["test_x"], data["test_y"]), "identity",
                  (data["train_x"][tr], names[data["train_y"][tr]], data["test_x"][te], names[data["test_y"][te]]))  # fmt: skip


def unequal_rows(labels: list[str], first_task: list[str], share: int = 5, every_task: bool = False) -> list[int]:
    """The training rows (of their ``labels``, in the order sent) an unequal stream keeps: a ``share``-th of each
    first-task class's samples (the first ones), every sample of the later classes (``every_task``: every class cut)."""
    sent: Counter[str] = Counter()
    total = Counter(labels)
    rows = []
    for i, lab in enumerate(labels):
        sent[lab] += 1
        if (lab not in first_task and not every_task) or sent[lab] <= max(1, total[lab] // share):
            rows.append(i)
    return rows


def unequal(stream: Stream, share: int = 5, every_task: bool = False) -> Stream:
    """The stream with its first task's classes sent with a ``share``-th of their training samples (the first ones),
    the later tasks whole: tasks that differ ``share``x in samples a class (``every_task``: every class so cut)."""
    rows = unequal_rows([lab for lab, _ in stream.train], stream.tasks[0], share, every_task)
    if stream.arrays is not None and len(stream.arrays[0]) == len(stream.train):
        xtr, ytr, xte, yte = stream.arrays
        stream.arrays = (xtr[rows], ytr[rows], xte, yte)
    stream.train = [stream.train[i] for i in rows]
    return stream


def few_shot(stream: Stream, per_class: int, seed: int) -> Stream:
    """The stream with only ``per_class`` training samples of each class (a seeded choice)."""
    rng = np.random.default_rng(seed + 11)
    order = rng.permutation(len(stream.train))
    taken: Counter[str] = Counter()
    rows = []
    for i in order:
        lab = stream.train[i][0]
        if taken[lab] < per_class:
            taken[lab] += 1
            rows.append(i)
    if stream.arrays is not None and len(stream.arrays[0]) == len(stream.train):  # the ceiling from the same samples
        xtr, ytr, xte, yte = stream.arrays
        stream.arrays = (xtr[rows], ytr[rows], xte, yte)
    stream.train = [stream.train[i] for i in rows]
    return stream


def renamed(stream: Stream, old: str, new: str, beside: str | None = None) -> Stream:
    """Half of ``old``'s training samples sent again as ``new``, in a last task of its own, or beside class
    ``beside`` (taken out of its own task: a new class the last task adds too)."""
    mine = [i for i, (lab, _) in enumerate(stream.train) if lab == old]
    again = set(mine[1::2])
    stream.train = [(new, b) if i in again else (lab, b) for i, (lab, b) in enumerate(stream.train)]
    if beside is None:
        stream.tasks = [*stream.tasks, [new]]
    else:
        stream.tasks = [kept for t in stream.tasks if (kept := [c for c in t if c != beside])] + [[new, beside]]
    return stream


def load_stream(name: str, test_per_class: int | None, seed: int = 0) -> Stream | str:
    """The stream, or why it cannot be run here."""
    kind, _, shape = name.partition("-")
    per_task = int(shape.split("x")[1].rstrip("uf")) if "x" in shape else 2
    if kind == "banking77":
        got = _banking77(name, 1 if "x" in shape else 10, int(shape.split("x")[0]) if "x" in shape else None, seed)
        if isinstance(got, str):
            return got
        stream = got
    elif kind == "digits":
        images, labels = load_digits_arrays()
        stream = _grey(name, np.round(images * 255).astype(np.uint8), labels, per_task, seed)
    elif kind == "mnist":
        try:
            images, labels = mnist_5k_arrays()
        except FileNotFoundError as exc:
            return str(exc)
        stream = _grey(name, images, labels, per_task, seed)
    elif kind == "cifar":
        if not (CIFAR / "train").is_dir():
            return f"cifar10-mini is not at {CIFAR}"
        from service.client import read_image_folder

        def folder(part: str) -> list[tuple[str, str]]:
            return [(label, base64.b64encode(blob).decode()) for label, blob in read_image_folder(CIFAR / part)]

        train, test = folder("train"), folder("test")
        classes = sorted({label for label, _ in train})
        tasks = _tasks(classes, per_task, seed)
        if shape == "catdog":  # cat with dog in the first task, the other classes in pairs after it
            tasks = [["cat", "dog"], *_tasks([c for c in classes if c not in ("cat", "dog")], 2, seed)]
        stream = Stream(name, {"kind": "image", "channels": 3, "height": 32, "width": 32}, tasks, train, test)
    else:
        return f"unknown stream {name!r}; known: {', '.join(STREAMS)}"
    if shape.endswith(("u", "f")):
        stream = unequal(stream, every_task=shape.endswith("f"))
    if test_per_class:
        taken: Counter[str] = Counter()
        kept: list[tuple[str, Payload]] = []
        for lab, blob in stream.test:  # the first ``test_per_class`` of each class
            if taken[lab] < test_per_class:
                taken[lab] += 1
                kept.append((lab, blob))
        stream.test = kept
    return stream


def _predict(c: httpx.Client, name: str, rows: list[tuple[str, Payload]]) -> tuple[list[dict[str, Any]], int]:
    """The served predictions of ``rows`` (label, image or vector) in requests of 256, and the version that served."""
    out, version = [], -1
    for i in range(0, len(rows), 256):
        r = c.post(f"/v1/classifiers/{name}/predict", json={"inputs": [_field(b) for _, b in rows[i : i + 256]]})
        if r.status_code == 409:  # no version promoted yet: nothing is served
            return [], -1
        r.raise_for_status()
        body = r.json()
        out += body["predictions"]
        version = body["version"]
    return out, version


def served_scores(
    c: httpx.Client, name: str, test: list[tuple[str, Payload]], classes: set[str], novelty: bool = True,
    served: set[str] | None = None,
) -> tuple[float, int, dict[str, Any] | None, float, float]:
    """(accuracy on held-out samples of ``classes``, the served version's number, its novelty on them against
    held-out samples of every class not yet learned: AUROC, known rate, unknown flagged, and beside it the AUROC
    of the served score, the maximum softmax probability as the API rounds it; None when the version serves no
    novelty or every class is learned; the served score's expected calibration error on the held-out samples of
    the classes the served version has learnt, ``served`` (default ``classes``), and on those of ``classes``).
    The two ECEs differ only after a rejected task: the version still served has never learnt its classes, so it
    cannot be right on their samples whatever its score says (they are its unknown inputs, which novelty flags).
    The unlearned classes are sent only when the version serves novelty and ``novelty`` asks."""
    from model_core.calibration import expected_calibration_error

    known_rows = [(lab, b) for lab, b in test if lab in classes]
    known, version = _predict(c, name, known_rows)
    right = np.array([p["label"] == lab for p, (lab, _) in zip(known, known_rows, strict=False)], dtype=bool)
    acc = float(right.sum()) / max(len(known_rows), 1)
    scores = np.array([p["score"] for p in known])
    ece_all = expected_calibration_error(scores, right) if known else float("nan")
    own = np.array([lab in (classes if served is None else served) for lab, _ in known_rows], dtype=bool)
    ece = expected_calibration_error(scores[own], right[own]) if own.any() else float("nan")
    unknown_rows = [(lab, b) for lab, b in test if lab not in classes]
    if not novelty or not known or known[0]["novelty"] is None or not unknown_rows:
        return acc, version, None, ece, ece_all
    unknown, _ = _predict(c, name, unknown_rows)

    def column(preds: list[dict[str, Any]], key: str, sign: float = 1.0) -> np.ndarray:
        return np.array([sign * p[key] for p in preds], dtype=float)

    return (
        acc,
        version,
        {
            "auroc": round(auroc(column(known, "novelty"), column(unknown, "novelty")), 4),
            "auroc_msp": round(auroc(column(known, "score", -1), column(unknown, "score", -1)), 4),
            "known_rate": round(float(column(known, "known").mean()), 4),
            "unknown_flagged": round(1 - float(column(unknown, "known").mean()), 4),
        },
        ece,
        ece_all,
    )


def logistic_ceiling(stream: Stream, balanced: bool = False) -> float | None:
    """Accuracy of an offline logistic regression on the stream's inputs (standardised), fitted on every training
    sample of its classes at once, on its held-out samples; None when the stream has no arrays here. ``balanced``:
    each class's samples weighted by the inverse of its count (scikit-learn's ``class_weight="balanced"``), the
    ceiling for a stream whose classes come in unequal numbers, as the service's balanced heads are."""
    photos = stream.input.get("kind") == "image" and stream.input.get("channels") == 3
    if stream.arrays is None and photos and stream.backbone is None:  # on the default backbone's features only
        stream.arrays = photo_features(stream)
    if stream.arrays is None:
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, yte = stream.arrays
    weights = "balanced" if balanced else None
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight=weights)).fit(xtr, ytr)
    return round(float(probe.score(xte, yte)), 4)


def photo_features(stream: Stream) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The frozen features a photo classifier on the service's default backbone learns from, of exactly the photos
    the stream sends and scores (decoded by the API's own ``decode_image``), through the backbone's ONNX graph
    (resize and normalisation inside it, as served); fp32, whatever ENGRAM_INT8_BACKBONE says."""
    from model_core.config import BackboneSpec, InputSpec, NetworkSpec, default_backbone
    from model_core.export_frozen import backbone_graph
    from model_core.learner import Learner
    from model_core.quantize import features
    from service.inference.inputs import InputFormat, decode_image
    from service.settings import Settings

    spec = InputSpec("image", 3, int(stream.input["height"]), int(stream.input["width"]))
    network = NetworkSpec(spec, backbone=BackboneSpec.parse(default_backbone(spec)))
    graph = backbone_graph(Learner.create(network), "input", None)

    fmt, limit = InputFormat(spec), Settings().max_image_pixels

    def arrays(rows: list[tuple[str, Payload]]) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.stack([decode_image(base64.b64decode(str(b)), fmt, limit) for _, b in rows])
        return features(graph, pixels), np.array([lab for lab, _ in rows])

    (xtr, ytr), (xte, yte) = arrays(stream.train), arrays(stream.test)
    return xtr, ytr, xte, yte


def run_one(
    c: httpx.Client, stream: Stream, strategy: str, extra: dict[str, Any], shuffle_first: bool = False
) -> dict[str, Any]:
    name = f"{stream.name}-{strategy}".replace("_", "-")
    create: dict[str, Any] = {"name": name, "input": stream.input}
    if stream.backbone is not None:
        create["backbone"] = stream.backbone
    r = c.post("/v1/classifiers", json=create)
    r.raise_for_status()
    retention = "keep" if strategy in KEEPS_DATA else "discard"
    out: dict[str, Any] = {"stream": stream.name, "strategy": strategy, "backbone": r.json()["backbone"],
                           "order": stream.tasks, "tasks": []}  # fmt: skip
    seen: set[str] = set()
    served: set[str] = set()  # the classes of the tasks promoted: what the version served has learnt
    for t, classes in enumerate(stream.tasks, 1):
        samples = [{"label": lab, **_field(b)} for lab, b in stream.train if lab in classes]
        if shuffle_first and t == 1:  # a broken first job: its labels shuffled across its samples
            perm = np.random.default_rng(7).permutation(len(samples))
            samples = [{**s, "label": samples[j]["label"]} for s, j in zip(samples, perm, strict=True)]
        body = {"task": f"t{t}", "retention": retention, "samples": samples, **extra}
        if strategy != "default":
            body["strategy"] = strategy
        start = time.perf_counter()
        r = c.post(f"/v1/classifiers/{name}/learn", json=body)
        r.raise_for_status()
        job = r.json()
        while job["status"] not in TERMINAL:
            time.sleep(0.2)
            job = c.get(f"/v1/jobs/{job['job_id']}").json()
        wall = time.perf_counter() - start
        seen |= set(classes)
        if job["status"] == "promoted":
            served |= set(classes)
        acc, version, novelty, ece, ece_all = served_scores(c, name, stream.test, seen, served=served)
        if job["status"] == "promoted" and version != job["version"]:
            print(f"  (stale: the process that reported v{job['version']} promoted served v{version})")
        report = job.get("report") or {}
        seconds = job.get("seconds") or {}
        training = report.get("training") or {}
        row = {"task": t, "classes": classes, "status": job["status"], "served_version": version,
               "served_accuracy": round(acc, 4), "ece": round(ece, 4), "ece_all": round(ece_all, 4),
               "wall_s": round(wall, 2),
               "calibration": report.get("calibration"),
               "worker_s": round(sum(v for k, v in seconds.items() if "." not in k), 2),
               "gate_s": seconds.get("gate"), "steps": training.get("steps"), "stopped": training.get("stopped"),
               "failures": report.get("failures"), "causes": [x.get("cause") for x in report.get("tasks", [])
                                                                 if x.get("before") is not None],
               "error": job.get("error"), "novelty": novelty,
               "gate": {k: report.get(k) for k in ("tasks", "classes", "confused_pairs", "confusion_note", "new_class_bias",
                                                   "renamed_classes", "strategy_choice")}}  # fmt: skip
        int8 = report.get("int8")  # the int8 backbone's check (service.jobs.int8); None when the job used fp32
        row["int8"] = None if not int8 else {k: int8.get(k) for k in ("serve_int8", "agreement", "accuracy_fp32",
                                                                      "accuracy_int8", "reason")}  # fmt: skip
        row["seconds"] = seconds
        if int8:
            print(f"  int8: {int8.get('reason')}")
        out["tasks"].append(row)
        out["resolved"] = out.get("resolved") if job["status"] != "promoted" and out.get("resolved") else job.get(
            "strategy")  # what "default" became
        if report.get("strategy_choice"):
            out["choice"] = report["strategy_choice"]
        new_row = next((x for x in report.get("tasks", []) if x.get("new")), {})
        row["floor"], row["floor_source"] = new_row.get("floor"), new_row.get("floor_source")
        mark = {"promoted": "P", "rejected": "R"}.get(job["status"], "F")
        print(f"  {stream.name} {strategy} task {t} {classes}: {mark} served v{version} acc {acc:.3f} ece {ece:.3f} "
              f"({row['worker_s']} s worker, gate {row['gate_s']} s, {row['steps']} steps, {row['stopped']}; "
              f"new task {new_row.get('after')}{_cross_text(new_row)} floor {row['floor']} from "
              f"{_floor_from(row['floor_source'])})"
              + (f" {row['failures'] or row['error']}" if mark != "P" else ""), flush=True)  # fmt: skip
    if len(stream.tasks) > 1:  # the first task's classes under the last version served: what later tasks left them
        first, _, _, first_ece, _ = served_scores(c, name, stream.test, set(stream.tasks[0]), novelty=False)
        out["first_task_final"] = {"accuracy": round(first, 4), "ece": round(first_ece, 4)}
        print(f"  {stream.name} {strategy}: the first task's classes {stream.tasks[0]} after the last task: "
              f"accuracy {first:.3f}, ece {first_ece:.3f}", flush=True)  # fmt: skip
    return out


def _cross_text(row: dict[str, Any]) -> str:
    cross = row.get("cross_validated") or {}
    if "after" in cross:
        return f" (cross-validated {cross['after']} on {cross['n']})"
    return f" (no cross-validation: {cross['error']})" if cross.get("error") else ""


def _floor_from(source: dict[str, Any] | None) -> str:
    if not source:
        return "?"
    if source.get("rule") != "data":
        return str(source.get("rule"))
    return f"chance {source['chance']} / nearest mean {source['reference']}"


def _trial_score(trial: dict[str, Any]) -> str:
    """A candidate's score, or why it has none: refused by the job, or not scored (a closed-form one applied)."""
    if trial["score"] is not None:
        return str(trial["score"])
    return "not scored" if str(trial.get("error") or "").startswith("not scored") else "refused"


def print_choices(results: list[dict[str, Any]]) -> None:
    """What each stream's first job chose, its candidates' scores, and the exemplar-free strategies' final accuracy."""
    rows = [r for r in results if r.get("choice")]
    if not rows:
        return
    free = EXEMPLAR_FREE
    print("\n| stream | first job chose | candidates' scores (first job) | why | final accuracy per exemplar-free "
          "strategy | best |")
    print("|---|---|---|---|---|---|")
    for res in rows:
        ch = res["choice"]
        scores = ", ".join(f"{t['strategy']} {_trial_score(t)}"
                           + (" (capped)" if t.get("capped") else "") for t in ch["candidates"])  # fmt: skip
        finals = {r["strategy"]: r["tasks"][-1]["served_accuracy"] for r in results
                  if r["stream"] == res["stream"] and r["strategy"] in free}  # fmt: skip
        best = max(finals.items(), key=lambda kv: kv[1]) if finals else ("-", float("nan"))
        print(f"| {res['stream']} | {ch['chosen']} (final {res['tasks'][-1]['served_accuracy']:.3f}) | {scores} | "
              f"{ch['why']} | {', '.join(f'{k} {v:.3f}' for k, v in finals.items())} | {best[0]} {best[1]:.3f} |")


def print_table(results: list[dict[str, Any]]) -> None:
    print("\n| stream | strategy | verdicts | served accuracy after each task | final | lr | ece final (max) | "
          "s/task (gate) |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        tasks = res["tasks"]
        marks = "".join({"promoted": "P", "rejected": "R"}.get(t["status"], "F") for t in tasks)
        accs = " ".join(f"{t['served_accuracy']:.2f}" for t in tasks)
        sec = np.mean([t["worker_s"] for t in tasks])
        gate = np.mean([t["gate_s"] or 0 for t in tasks])
        name = res["strategy"] if res["strategy"] != "default" else f"default ({res.get('resolved')})"
        lr = "-" if res.get("lr") is None else f"{res['lr']:.3f}"
        ece = f"{tasks[-1]['ece']:.3f} ({max(t['ece'] for t in tasks):.3f})"
        print(f"| {res['stream']} | {name} | {marks} | {accs} | {tasks[-1]['served_accuracy']:.3f} | {lr} | {ece} | "
              f"{sec:.1f} ({gate:.1f}) |")  # fmt: skip


def print_novelty_table(results: list[dict[str, Any]]) -> None:
    """The served novelty after each task but the last, against the classes not yet learned (where it has one)."""
    rows = [(res, [t["novelty"] for t in res["tasks"] if t.get("novelty")]) for res in results]
    rows = [(res, nov) for res, nov in rows if nov]
    if not rows:
        return
    print(
        "\n| stream | strategy | novelty AUROC after each task (known: learned classes, unknown: the rest) | "
        "mean | served MSP's AUROC (mean) | known rate (mean) | unknown flagged (mean) |"
    )
    print("|---|---|---|---|---|---|---|")
    for res, nov in rows:
        name = res["strategy"] if res["strategy"] != "default" else f"default ({res.get('resolved')})"
        aurocs = " ".join(f"{n['auroc']:.3f}" for n in nov)
        print(f"| {res['stream']} | {name} | {aurocs} | "
              f"{np.mean([n['auroc'] for n in nov]):.3f} | {np.mean([n['auroc_msp'] for n in nov]):.3f} | "
              f"{np.mean([n['known_rate'] for n in nov]):.3f} | "
              f"{np.mean([n['unknown_flagged'] for n in nov]):.3f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The gate's verdicts through the real service (see module doc)")
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--test-per-class", type=int, help="score on at most this many held-out samples a class")
    parser.add_argument("--options", default="{}", help='learn-request options as JSON, e.g. {"iterations": 300}')
    parser.add_argument("--seed", type=int, default=0, help="0: classes in order; N: shuffled (and split) with seed N")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--per-class", type=int, help="few-shot: send only this many samples of each class")
    parser.add_argument("--shuffle-first", action="store_true", help="shuffle the first task's labels")
    parser.add_argument("--rename", help="OLD:NEW[:BESIDE]: half of OLD's samples sent again as NEW in a last task "
                        "(beside class BESIDE, moved there from its own task)")
    parser.add_argument("--backbone", help="create every classifier with this backbone ('default': the service's "
                        "default for the input; unset: each stream's own, identity for banking77)")
    args = parser.parse_args(argv)
    extra = {"options": json.loads(args.options)} if json.loads(args.options) else {}
    results: list[dict[str, Any]] = []
    with engram_server("engram-gate-truth-") as c:
        for stream_name in args.streams.split(","):
            stream = load_stream(stream_name, args.test_per_class, args.seed)
            if isinstance(stream, str):
                print(f"skipping {stream_name}: {stream}")
                continue
            if args.per_class:
                stream = few_shot(stream, args.per_class, args.seed)
                stream.name = f"{stream.name}-{args.per_class}pc"
            if args.rename:
                stream = renamed(stream, *args.rename.split(":"))
            if args.backbone:
                stream.backbone = None if args.backbone == "default" else args.backbone
            print(f"{stream_name}: tasks {stream.tasks}", flush=True)
            ceiling = logistic_ceiling(stream)
            counts = Counter(lab for lab, _ in stream.train).values()
            # classes sent in unequal numbers (the u streams): also the class-balanced ceiling, printed beside
            unequal_counts = ceiling is not None and max(counts) > 1.5 * min(counts)
            balanced = logistic_ceiling(stream, balanced=True) if unequal_counts else None
            also = "" if balanced is None else f" (class-balanced {balanced})"
            print(f"{stream_name}: offline logistic regression {ceiling}{also}", flush=True)
            for strategy in args.strategies.split(","):
                results.append({**run_one(c, stream, strategy, extra, args.shuffle_first), "lr": ceiling,
                                "lr_balanced": balanced})  # fmt: skip
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
    print_table(results)
    print_choices(results)
    print_novelty_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
