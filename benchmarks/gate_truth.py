"""The verdict table: every stream through the real service, its defaults, its holdout and its gate.

    python -m benchmarks.gate_truth [--streams digits-5x2,digits-10x1,mnist-5x2,cifar-5x2,cifar-10x1]
        [--strategies joint,replay,generative_replay,naive,ewc,lwf] [--test-per-class N] [--seed N] [--json FILE]
        [--per-class N] [--shuffle-first] [--rename OLD:NEW]

Few-shot: ``--per-class N`` sends only N samples of each class (seeded), the gate holding out its 20% of them;
``digits-2x5`` / ``mnist-2x5`` are tasks of 5 classes. ``--shuffle-first`` shuffles the first task's labels
(a deliberately broken candidate: the gate should reject it, and the stream goes on from nothing).
``--rename cat:kitty`` keeps half of class ``cat``'s training samples in its task and sends the other half as
``kitty`` in a last task of its own (an old class under another name: the gate should refuse it). The
table's ``default`` row names what the first job chose and its candidates' scores.

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
  ``test/`` to score.
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
from model_core.strategy_specs import SPECS
from service.domain.job_status import TERMINAL

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
# "default": the request names no strategy, so the service picks the classifier's default (default_strategy)
STRATEGIES = ("default", "joint", "replay", "generative_replay", "naive", "ewc", "lwf")
STREAMS = ("digits-5x2", "digits-10x1", "mnist-5x2", "cifar-5x2", "cifar-10x1")
KEEPS_DATA = {name for name, spec in SPECS.items() if spec.stores_data}  # sent with retention "keep"


@dataclass
class Stream:
    name: str
    input: dict[str, Any]
    tasks: list[list[str]]  # class names of each task, in order
    train: list[tuple[str, str]]  # (label, base64 image)
    test: list[tuple[str, str]]


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
    return Stream(name, {"kind": "image", "channels": 1, "height": side, "width": side},
                  _tasks([str(c) for c in range(10)], per_task, seed),
                  [items[i] for i in train], [items[i] for i in test])  # fmt: skip


def few_shot(stream: Stream, per_class: int, seed: int) -> Stream:
    """The stream with only ``per_class`` training samples of each class (a seeded choice)."""
    rng = np.random.default_rng(seed + 11)
    order = rng.permutation(len(stream.train))
    taken: Counter[str] = Counter()
    kept = []
    for i in order:
        lab = stream.train[i][0]
        if taken[lab] < per_class:
            taken[lab] += 1
            kept.append(stream.train[i])
    stream.train = kept
    return stream


def renamed(stream: Stream, old: str, new: str) -> Stream:
    """Half of ``old``'s training samples sent again as ``new``, in a last task of its own."""
    mine = [i for i, (lab, _) in enumerate(stream.train) if lab == old]
    again = set(mine[1::2])
    stream.train = [(new, b) if i in again else (lab, b) for i, (lab, b) in enumerate(stream.train)]
    stream.tasks = [*stream.tasks, [new]]
    return stream


def load_stream(name: str, test_per_class: int | None, seed: int = 0) -> Stream | str:
    """The stream, or why it cannot be run here."""
    kind, _, shape = name.partition("-")
    per_task = int(shape.split("x")[1]) if "x" in shape else 2
    if kind == "digits":
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
        stream = Stream(name, {"kind": "image", "channels": 3, "height": 32, "width": 32},
                        _tasks(classes, per_task, seed), train, test)  # fmt: skip
    else:
        return f"unknown stream {name!r}; known: {', '.join(STREAMS)}"
    if test_per_class:
        taken: Counter[str] = Counter()
        kept: list[tuple[str, str]] = []
        for lab, blob in stream.test:  # the first ``test_per_class`` of each class
            if taken[lab] < test_per_class:
                taken[lab] += 1
                kept.append((lab, blob))
        stream.test = kept
    return stream


def _predict(c: httpx.Client, name: str, rows: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], int]:
    """The served predictions of ``rows`` (label, base64 image) in requests of 256, and the version that served."""
    out, version = [], -1
    for i in range(0, len(rows), 256):
        r = c.post(f"/v1/classifiers/{name}/predict", json={"inputs": [{"image_b64": b} for _, b in rows[i : i + 256]]})
        if r.status_code == 409:  # no version promoted yet: nothing is served
            return [], -1
        r.raise_for_status()
        body = r.json()
        out += body["predictions"]
        version = body["version"]
    return out, version


def served_scores(
    c: httpx.Client, name: str, test: list[tuple[str, str]], classes: set[str]
) -> tuple[float, int, dict[str, Any] | None]:
    """(accuracy on held-out samples of ``classes``, the served version's number, its novelty on them against
    held-out samples of every class not yet learned: AUROC, known rate, unknown flagged, and beside it the AUROC
    of the served score, the maximum softmax probability as the API rounds it; None when the version serves no
    novelty or every class is learned). The unlearned classes are sent only when the version serves novelty."""
    known_rows = [(lab, b) for lab, b in test if lab in classes]
    known, version = _predict(c, name, known_rows)
    acc = sum(p["label"] == lab for p, (lab, _) in zip(known, known_rows, strict=False)) / max(len(known_rows), 1)
    unknown_rows = [(lab, b) for lab, b in test if lab not in classes]
    if not known or known[0]["novelty"] is None or not unknown_rows:
        return acc, version, None
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
    )


def run_one(
    c: httpx.Client, stream: Stream, strategy: str, extra: dict[str, Any], shuffle_first: bool = False
) -> dict[str, Any]:
    name = f"{stream.name}-{strategy}".replace("_", "-")
    r = c.post("/v1/classifiers", json={"name": name, "input": stream.input})
    r.raise_for_status()
    retention = "keep" if strategy in KEEPS_DATA else "discard"
    out: dict[str, Any] = {"stream": stream.name, "strategy": strategy, "backbone": r.json()["backbone"],
                           "order": stream.tasks, "tasks": []}  # fmt: skip
    seen: set[str] = set()
    for t, classes in enumerate(stream.tasks, 1):
        samples = [{"label": lab, "image_b64": b} for lab, b in stream.train if lab in classes]
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
        acc, version, novelty = served_scores(c, name, stream.test, seen)
        if job["status"] == "promoted" and version != job["version"]:
            print(f"  (stale: the process that reported v{job['version']} promoted served v{version})")
        report = job.get("report") or {}
        seconds = job.get("seconds") or {}
        training = report.get("training") or {}
        row = {"task": t, "classes": classes, "status": job["status"], "served_version": version,
               "served_accuracy": round(acc, 4), "wall_s": round(wall, 2),
               "worker_s": round(sum(v for k, v in seconds.items() if "." not in k), 2),
               "gate_s": seconds.get("gate"), "steps": training.get("steps"), "stopped": training.get("stopped"),
               "failures": report.get("failures"), "causes": [x.get("cause") for x in report.get("tasks", [])
                                                                 if x.get("before") is not None],
               "error": job.get("error"), "novelty": novelty,
               "gate": {k: report.get(k) for k in ("tasks", "classes", "confused_pairs", "confusion_note", "new_class_bias",
                                                   "renamed_classes", "strategy_choice")}}  # fmt: skip
        out["tasks"].append(row)
        out["resolved"] = out.get("resolved") if job["status"] != "promoted" and out.get("resolved") else job.get(
            "strategy")  # what "default" became
        if report.get("strategy_choice"):
            out["choice"] = report["strategy_choice"]
        new_row = next((x for x in report.get("tasks", []) if x.get("new")), {})
        row["floor"], row["floor_source"] = new_row.get("floor"), new_row.get("floor_source")
        mark = {"promoted": "P", "rejected": "R"}.get(job["status"], "F")
        print(f"  {stream.name} {strategy} task {t} {classes}: {mark} served v{version} acc {acc:.3f} "
              f"({row['worker_s']} s worker, gate {row['gate_s']} s, {row['steps']} steps, {row['stopped']}; "
              f"new task {new_row.get('after')} floor {row['floor']} from {_floor_from(row['floor_source'])})"
              + (f" {row['failures'] or row['error']}" if mark != "P" else ""), flush=True)  # fmt: skip
    return out


def _floor_from(source: dict[str, Any] | None) -> str:
    if not source:
        return "?"
    if source.get("rule") != "data":
        return str(source.get("rule"))
    return f"chance {source['chance']} / nearest mean {source['reference']}"


def print_choices(results: list[dict[str, Any]]) -> None:
    """What each stream's first job chose, its candidates' scores, and the exemplar-free strategies' final accuracy."""
    rows = [r for r in results if r.get("choice")]
    if not rows:
        return
    free = {n for n, s in SPECS.items() if not s.stores_data and s.adds_classes and not s.needs_tasks}
    print("\n| stream | first job chose | candidates' scores (first job) | why | final accuracy per exemplar-free "
          "strategy | best |")
    print("|---|---|---|---|---|---|")
    for res in rows:
        ch = res["choice"]
        scores = ", ".join(f"{t['strategy']} {t['score'] if t['score'] is not None else 'refused'}"
                           + (" (capped)" if t.get("capped") else "") for t in ch["candidates"])  # fmt: skip
        finals = {r["strategy"]: r["tasks"][-1]["served_accuracy"] for r in results
                  if r["stream"] == res["stream"] and r["strategy"] in free}  # fmt: skip
        best = max(finals.items(), key=lambda kv: kv[1]) if finals else ("-", float("nan"))
        print(f"| {res['stream']} | {ch['chosen']} (final {res['tasks'][-1]['served_accuracy']:.3f}) | {scores} | "
              f"{ch['why']} | {', '.join(f'{k} {v:.3f}' for k, v in finals.items())} | {best[0]} {best[1]:.3f} |")


def print_table(results: list[dict[str, Any]]) -> None:
    print("\n| stream | strategy | verdicts | served accuracy after each task | final | s/task (gate) |")
    print("|---|---|---|---|---|---|")
    for res in results:
        tasks = res["tasks"]
        marks = "".join({"promoted": "P", "rejected": "R"}.get(t["status"], "F") for t in tasks)
        accs = " ".join(f"{t['served_accuracy']:.2f}" for t in tasks)
        sec = np.mean([t["worker_s"] for t in tasks])
        gate = np.mean([t["gate_s"] or 0 for t in tasks])
        name = res["strategy"] if res["strategy"] != "default" else f"default ({res.get('resolved')})"
        print(f"| {res['stream']} | {name} | {marks} | {accs} | {tasks[-1]['served_accuracy']:.3f} | "
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
    parser.add_argument("--rename", help="OLD:NEW: half of OLD's samples sent again as NEW in a last task")
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
            print(f"{stream_name}: tasks {stream.tasks}", flush=True)
            for strategy in args.strategies.split(","):
                results.append(run_one(c, stream, strategy, extra, args.shuffle_first))
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
    print_table(results)
    print_choices(results)
    print_novelty_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
