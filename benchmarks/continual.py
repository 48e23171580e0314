"""Split-Digits (or Split-MNIST) for every strategy in both scenarios: how much each one forgets.

    python -m benchmarks.continual                       # all strategies, both scenarios, 3 seeds
    python -m benchmarks.continual --strategies replay,ewc --scenarios task-incremental --seeds 1
    python -m benchmarks.continual --dataset mnist --data-root ~/data --download   # van de Ven protocol

Runs are spread over ``--jobs`` processes, each using one torch thread (the models are small, so one
thread per run beats several threads per run on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from model_core.config import SCENARIOS, InputSpec, NetworkSpec, TrainConfig


@dataclass(frozen=True)
class Protocol:
    hidden: tuple[int, ...]
    iterations: int
    batch_size: int
    lr: float


# Split-Digits: MLP 2x256 and Adam 1e-3 as in the Avalanche peer run; a fixed number of steps per task
# (as van de Ven et al. do) rather than epochs, so that joint training costs the same per task.
PROTOCOLS = {
    "digits": Protocol(hidden=(256, 256), iterations=300, batch_size=64, lr=1e-3),
    # van de Ven, Tuytelaars & Tolias (2022): MLP 2x400, Adam 1e-3, batch 128, 2000 iterations per task.
    "mnist": Protocol(hidden=(400, 400), iterations=2000, batch_size=128, lr=1e-3),
}
ALL_STRATEGIES = ("naive", "joint", "replay", "ewc", "lwf", "mas", "generative_replay")


def _one_run(
    dataset: str, data_root: str | None, download: bool, strategy: str, scenario: str, seed: int, device: str
) -> dict[str, Any]:
    import torch

    from model_core.data import split_digits, split_mnist
    from model_core.evaluation import run_stream

    torch.set_num_threads(1)
    proto = PROTOCOLS[dataset]
    if dataset == "digits":
        bench, shape = split_digits(), (1, 8, 8)
    else:
        bench, shape = split_mnist(data_root or ".", download=download), (1, 28, 28)
    spec = NetworkSpec(InputSpec("image", *shape), backbone="mlp", scenario=scenario, hidden=proto.hidden)  # type: ignore[arg-type]
    config = TrainConfig(
        iterations=proto.iterations, batch_size=proto.batch_size, lr=proto.lr, seed=seed, device=device
    )
    result = run_stream(bench, spec, strategy, config)
    m = result.metrics
    return {
        "strategy": strategy,
        "scenario": scenario,
        "seed": seed,
        "acc": m.average_accuracy,
        "bwt": m.bwt,
        "forgetting": statistics.mean(m.forgetting) if m.forgetting else 0.0,
        "matrix": [[None if math.isnan(v) else round(v, 4) for v in row] for row in m.matrix],
        "seconds": result.seconds,
    }


def summarise_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (strategy, scenario): mean/std over seeds."""
    rows = []
    keys = sorted(
        {(r["strategy"], r["scenario"]) for r in runs},
        key=lambda k: (SCENARIOS.index(k[1]), ALL_STRATEGIES.index(k[0])),
    )
    for strategy, scenario in keys:
        group = [r for r in runs if r["strategy"] == strategy and r["scenario"] == scenario]
        accs = [r["acc"] for r in group]
        rows.append({
            "strategy": strategy,
            "scenario": scenario,
            "seeds": [r["seed"] for r in group],
            "acc_mean": statistics.mean(accs),
            "acc_std": statistics.pstdev(accs),
            "bwt_mean": statistics.mean(r["bwt"] for r in group),
            "forgetting_mean": statistics.mean(r["forgetting"] for r in group),
            "seconds": statistics.mean(r["seconds"] for r in group),
            "runs": group,
        })  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("strategy", "scenario", "avg acc (mean ± std)", "BWT", "forgetting", "s / run"):
        table.add_column(col, justify="left" if col in ("strategy", "scenario") else "right")
    for r in rows:
        table.add_row(
            r["strategy"], r["scenario"], f"{r['acc_mean']:.3f} ± {r['acc_std']:.3f}",
            f"{r['bwt_mean']:+.3f}", f"{r['forgetting_mean']:.3f}", f"{r['seconds']:.1f}",
        )  # fmt: skip
    Console(width=120).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.continual", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(PROTOCOLS), default="digits")
    parser.add_argument("--data-root", help="MNIST folder (torchvision layout)")
    parser.add_argument("--download", action="store_true", help="let torchvision download MNIST into --data-root")
    parser.add_argument("--strategies", default=",".join(ALL_STRATEGIES))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds: 0..N-1")
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8), help="parallel runs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--json", dest="json_path", help="also write the rows as a JSON list")
    args = parser.parse_args(argv)

    strategies = [s for s in args.strategies.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in strategies:
        if s not in ALL_STRATEGIES:
            parser.error(f"unknown strategy {s!r}; choose from {', '.join(ALL_STRATEGIES)}")
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    if args.dataset == "mnist" and not args.data_root:
        parser.error("--dataset mnist needs --data-root")

    # Slowest first, so the pool does not end waiting on one long run.
    order = sorted(strategies, key=lambda s: s != "generative_replay")
    tasks = [
        (args.dataset, args.data_root, args.download, st, sc, seed, args.device)
        for st in order
        for sc in scenarios
        for seed in range(args.seeds)
    ]
    start = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(_one_run, *zip(*tasks, strict=True)))
    else:
        runs = [_one_run(*t) for t in tasks]
    wall = time.perf_counter() - start
    rows = summarise_runs(runs)
    name = "Split-Digits" if args.dataset == "digits" else "Split-MNIST"
    print_table(rows, f"{name}: average accuracy after the last task, {args.seeds} seed(s)")
    print(f"{len(runs)} runs in {wall:.1f} s wall time on {args.jobs} process(es), device {args.device}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
