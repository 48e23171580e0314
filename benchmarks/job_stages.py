"""Each stage of a learning job, in process, as a class-incremental classifier of vectors grows: what grows
faster than linearly in the classes learnt.

    python -m benchmarks.job_stages [--classes 1000] [--per-task 50] [--dim 64] [--per-class 20]
        [--strategy class_models] [--backbone identity] [--iterations 50] [--measure 100,200,400,1000]
        [--threads 1] [--gate-suite-samples 20000] [--json FILE]

Runs the stages of ``service.jobs.training.JobRun`` one after the other on one learner, without the HTTP API, the
database or the artifact store (``benchmarks.class_growth`` measures those, through the service): scoring the
parent on the regression suite (``parent``: the labels its version stored for its own suite, checked on a few
rows, and a prediction of this job's new rows only), learning the task (``train``), scoring the candidate (``candidate``),
the new task's nearest-class-mean reference (``reference``), the served score's temperature (``calibrate``) and the
novelty threshold (``novelty``) on the suite's calibration rows (``service.jobs.training.calibration_rows``), the
gate's report (``evaluate``), and at the ``--measure`` points the ONNX export with its parity check (``export``).
The stream is ``benchmarks.class_growth.stream``: Gaussian blobs of ``dim`` values, ``per_class`` samples a class,
4 of each held out into the regression suite (the gate's 20%). ``--iterations`` fixes the optimiser steps of a
strategy that takes them. Prints a row per task (seconds per stage) and, at the end, each stage's growth exponent
between the first and the last measured point (1: linear in the classes learnt, 2: quadratic).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.class_growth import stream
from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.export import Novelty, export_onnx
from model_core.learner import Learner
from model_core.novelty import fit_novelty, novelty_module
from service.domain.gate import GateConfig, GateInputs, evaluate
from service.domain.gate_advice import JobFacts
from service.jobs.suite import scored_rows
from service.jobs.training import (
    GATE_SUITE_SAMPLES,
    SERVED,
    calibration_rows,
    experience,
    merge_suite,
    new_task_reference,
    parent_scores,
    predictions,
    scored_suite,
    with_served,
)

HELD_OUT = 4  # samples of each class in the regression suite (20% of 20)
STAGES = ("parent", "train", "candidate", "reference", "calibrate", "novelty", "evaluate", "export")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    x, y = stream(args.classes, args.dim, args.per_class)
    spec = NetworkSpec(input=InputSpec(kind="vector", dim=args.dim), backbone=args.backbone or "mlp")  # type: ignore[arg-type]
    learner = Learner.create(spec, 0)
    config = TrainConfig(iterations=args.iterations)
    rng = np.random.default_rng(0)
    suite: dict[str, np.ndarray] = {}
    served: np.ndarray | None = None  # the last candidate's labels for its suite (stored with its version)
    rows = []
    for t, start in enumerate(range(0, args.classes, args.per_task), 1):
        keep = (y >= start) & (y < start + args.per_task)
        xs, ys = x[keep], np.array([f"c{v}" for v in y[keep]])
        held = np.zeros(len(xs), dtype=bool)
        for c in np.unique(ys):
            held[rng.permutation(np.flatnonzero(ys == c))[:HELD_OUT]] = True
        train, task = {"x": xs[~held], "label": ys[~held]}, f"t{t}"
        suite = merge_suite(suite, {"x": xs[held], "label": ys[held]}, task)
        names = list(dict.fromkeys(suite["task"].astype(str)))
        sec: dict[str, float] = {}
        t0 = time.perf_counter()
        # the rows the gate scores (service.jobs.suite.scored_rows): all, or past the budget a seeded sample
        picked = scored_rows(suite["task"], suite["label"], task, args.gate_suite_samples, 0)
        scored, scored_served = scored_suite(suite, served, picked)
        scores = parent_scores(learner, scored, names, scored_served)  # the parent's stored labels, checked
        slices, units, parent = scores.slices, scores.units, scores.predicted
        sec["parent"] = since(t0)
        t0 = time.perf_counter()
        result = learner.learn(experience(task, train["x"], train["label"]), args.strategy, {}, config)
        sec["train"] = since(t0)
        t0 = time.perf_counter()
        predicted = {n: predictions(learner, *slices[n], n, units, parent[n]) for n in slices}
        tasks = [(n, scores.correct[n], np.asarray(p.after == p.labels)) for n, p in predicted.items()]
        sec["candidate"] = since(t0)
        served = with_served(suite, predicted, picked)[SERVED]
        t0 = time.perf_counter()
        chance, reference = new_task_reference(learner, task, train, slices)
        sec["reference"] = since(t0)
        fit = calibration_rows(len(suite["x"]))
        t0 = time.perf_counter()
        learner.calibrate(torch.from_numpy(suite["x"][fit]), suite["label"][fit].astype(str).tolist(),
                          suite["task"][fit].astype(str).tolist())  # fmt: skip
        sec["calibrate"] = since(t0)
        t0 = time.perf_counter()
        module, novelty = novelty_module(learner), None
        if module is not None:
            novelty = Novelty(module, fit_novelty(learner, module, torch.from_numpy(suite["x"][fit])), 0.95)
        sec["novelty"] = since(t0)
        t0 = time.perf_counter()
        inputs = GateInputs(
            scenario=learner.scenario, strategy=args.strategy, retention="discard", new_task=task,
            added_classes=result.new_labels, tasks=tasks, labels={n: slices[n][1] for n in slices},
            diagnostics=result.diagnostics, facts=JobFacts(result.params, result.train.steps, spec.to_dict(),
                                                           result.train.summary()),
            predictions=predicted, chance_classes=chance, reference=reference,
        )  # fmt: skip
        evaluate(GateConfig(), inputs)
        sec["evaluate"] = since(t0)
        learnt = start + args.per_task
        if learnt in args.measure:
            t0 = time.perf_counter()
            export_onnx(learner, torch.from_numpy(suite["x"][:64]), novelty=novelty)
            sec["export"] = since(t0)
        row = {"strategy": args.strategy, "classes": learnt, "suite": len(suite["x"]), "scored": len(scored["x"]),
               **sec}  # fmt: skip
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    return rows


def since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def exponents(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each stage's growth exponent log(s_last / s_first) / log(classes_last / classes_first), over the rows
    where it was measured (the first task's row left out: it starts from nothing)."""
    out = {}
    for stage in STAGES:
        got = [(r["classes"], r[stage]) for r in rows[1:] if r.get(stage)]
        if len(got) >= 2 and got[0][1] > 0 and got[-1][0] > got[0][0]:
            out[stage] = round(math.log(got[-1][1] / got[0][1]) / math.log(got[-1][0] / got[0][0]), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A job's stages in process as classes grow (see module doc)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-task", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--strategy", default="class_models")
    parser.add_argument("--backbone", help="the classifier's backbone (default: the MLP; 'identity' for analytic)")
    parser.add_argument(
        "--iterations", type=int, default=50, help="optimiser steps a task, where a strategy takes them"
    )
    parser.add_argument("--measure", default="100,200,400,1000", help="class counts at which the export is timed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable on a shared machine)")
    parser.add_argument("--gate-suite-samples", type=int, default=GATE_SUITE_SAMPLES,
                        help="the gate's suite budget (ENGRAM_GATE_SUITE_SAMPLES; 0: score the whole suite)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.measure = {int(v) for v in args.measure.split(",")}
    torch.set_num_threads(args.threads)
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n| classes | suite | scored | {' | '.join(STAGES)} |")
    print("|---|---|---|" + "---|" * len(STAGES))
    for r in rows:
        if r["classes"] in args.measure:
            print(f"| {r['classes']} | {r['suite']} | {r['scored']} | " + " | ".join(str(r.get(s, "")) for s in STAGES) + " |")
    print(f"\ngrowth exponent per stage, {rows[1]['classes']} to {rows[-1]['classes']} classes: {exponents(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
