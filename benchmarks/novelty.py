"""Unknown inputs: how well a version's novelty score tells classes it never learned from those it knows.

For each stream the classifier learns the first half of the classes (in tasks of two, as a service would), with
a fifth of each task's training samples held out as the gate does; the novelty threshold is calibrated on those
held-out samples (95% known). Then the stream's test samples of the known classes (known) and of the other half
(unknown) are scored by the version's novelty and, on the same model's logits, by the maximum softmax
probability (Hendrycks & Gimpel 2017) and the energy score (Liu et al. 2020). Printed per stream and strategy:
AUROC (unknown scored above known), the false-positive rate at 95% true-known rate (unknown samples taken for
known), the margin of our AUROC over the better baseline, and the share of known test samples under the
calibrated threshold (the target is within 2 points of the calibrated 95%).

    python -m benchmarks.novelty                        # digits, mnist-5k, cifar10-mini; default strategies
    python -m benchmarks.novelty --streams digits,mnist-5k --strategies default,generative_replay --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_core.config import TrainConfig
from model_core.data import Experience, split_by_classes, stratified_split
from model_core.learner import Learner
from model_core.novelty import fit_novelty, novelty_module, novelty_scores
from model_core.strategy_specs import default_strategy
from service.cli.benchmark import PROTOCOLS, load_benchmark, network_spec, precompute_features

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
STREAMS = {"digits": None, "mnist-5k": DATA / "mnist-5k", "cifar10-mini": DATA / "cifar10-mini"}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(an unknown sample scores above a known one), ties counted half (the Mann-Whitney statistic)."""
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    u = ranks[len(known) :].sum() - len(unknown) * (len(unknown) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def fpr_at_95(known: np.ndarray, unknown: np.ndarray) -> float:
    """Share of unknown samples at or below the score that keeps 95% of known samples known."""
    threshold = np.quantile(known, 0.95, method="higher")
    return float((unknown <= threshold).mean())


def _stream(name: str) -> tuple[list[Experience], list[Experience], list[Experience], Any]:
    """(known train tasks, known test, unknown test, input spec): the first half of the classes is known."""
    root = STREAMS[name]
    if root is not None and not root.exists():
        raise FileNotFoundError(f"{name} not found at {root}")
    bench, inp = load_benchmark(name, None, str(root) if root else None, False)

    def flat(exps: list[Experience]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        names = [c for e in exps for c in e.classes]
        y = torch.cat([torch.tensor([names.index(e.classes[i]) for i in e.y.tolist()]) for e in exps])
        return torch.cat([e.x for e in exps]), y, names

    x, y, names = flat(bench.train)
    half = len(names) // 2
    known = [list(range(i, min(i + 2, half))) for i in range(0, half, 2)]
    train = split_by_classes(x, y, known, names)
    tx, ty, tnames = flat(bench.test)
    assert tnames == names
    test = split_by_classes(tx, ty, [list(range(half)), list(range(half, len(names)))], names)
    return train, [test[0]], [test[1]], inp


def run(name: str, strategy: str, seed: int, features: dict[bytes, Any]) -> dict[str, Any]:
    train, (known_test,), (unknown_test,), inp = _stream(name)
    spec = network_spec(inp, "class-incremental", None, PROTOCOLS[name])
    learner = Learner.create(spec, seed=seed)
    learner.feature_cache.update(features)
    chosen = default_strategy(spec.to_dict()) if strategy == "default" else strategy
    held = []
    start = time.perf_counter()
    for exp in train:  # a fifth of each task held out, as the gate's holdout
        fit, out = stratified_split(exp.y.numpy(), 0.2, seed)
        learner.learn(Experience(exp.task, exp.x[fit], exp.y[fit], exp.classes), chosen, None, TrainConfig(seed=seed))
        held.append(exp.x[out])
    seconds = time.perf_counter() - start
    module = novelty_module(learner)
    if module is None:
        return {"stream": name, "strategy": chosen, "seed": seed, "skipped": "no class models"}
    threshold = fit_novelty(learner, module, torch.cat(held))
    row: dict[str, Any] = {"stream": name, "strategy": chosen, "seed": seed, "score": module.kind,
                           "train_seconds": round(seconds, 1)}  # fmt: skip
    scores = {}
    for split, exp in (("known", known_test), ("unknown", unknown_test)):
        logits = learner.logits(exp.x).double()
        ours = novelty_scores(learner, exp.x, module)
        assert ours is not None
        scores[split] = {"ours": ours.double().numpy(), "msp": -torch.softmax(logits, 1).max(1).values.numpy(),
                         "energy": -torch.logsumexp(logits, 1).numpy()}  # fmt: skip
    for key in ("ours", "msp", "energy"):
        row[f"auroc_{key}"] = round(auroc(scores["known"][key], scores["unknown"][key]), 4)
        row[f"fpr95_{key}"] = round(fpr_at_95(scores["known"][key], scores["unknown"][key]), 4)
    row["margin"] = round(row["auroc_ours"] - max(row["auroc_msp"], row["auroc_energy"]), 4)
    row["known_rate"] = round(float((scores["known"]["ours"] <= threshold).mean()), 4)
    row["unknown_flagged"] = round(float((scores["unknown"]["ours"] > threshold).mean()), 4)
    row["known_accuracy"] = round(learner.accuracy(known_test), 4)
    row["logit_margin"] = round(1.0 / float(module.sharpness), 3)  # the median top-two margin the ambiguity reads at
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("stream", "strategy", "score", "AUROC ours", "MSP", "energy", "margin", "FPR95 ours", "MSP", "energy",
            "known rate", "unknown flagged", "known acc")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if "skipped" not in r:
            groups.setdefault((r["stream"], r["strategy"]), []).append(r)
    for (stream, strategy), rs in groups.items():

        def m(k: str, rs: list[dict[str, Any]] = rs) -> str:
            return f"{statistics.mean(r[k] for r in rs):.3f}"

        print(f"| {stream} | {strategy} | {rs[0]['score']} | {m('auroc_ours')} | {m('auroc_msp')} | "
              f"{m('auroc_energy')} | {float(m('margin')):+.3f} | {m('fpr95_ours')} | {m('fpr95_msp')} | "
              f"{m('fpr95_energy')} | {m('known_rate')} | {m('unknown_flagged')} | {m('known_accuracy')} |")  # fmt: skip
    for r in rows:
        if "skipped" in r:
            print(f"{r['stream']} {r['strategy']}: skipped ({r['skipped']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.novelty", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="digits,mnist-5k,cifar10-mini", help="comma-separated: " + ",".join(STREAMS))
    parser.add_argument("--strategies", default="default", help="comma-separated; 'default' is the service's choice")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (the mean is printed)")
    parser.add_argument("--feature-cache", help="folder keeping frozen-backbone features between runs")
    parser.add_argument("--json", help="write every run's row to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name in args.streams.split(","):
        if name not in STREAMS:
            parser.error(f"unknown stream {name!r}; known: {', '.join(STREAMS)}")
        root = STREAMS[name]
        if root is not None and not root.exists():
            print(f"skipping {name}: no data at {root}", file=sys.stderr)
            continue
        features, _ = precompute_features(name, None, str(root) if root else None, None, "auto", args.feature_cache)
        for strategy in args.strategies.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                row = run(name, strategy, seed, features)
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
