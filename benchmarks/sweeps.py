"""The parameter sweeps behind the defaults in model_core/strategy_specs.py (Split-Digits, 3 seeds).

    python -m benchmarks.sweeps            # prints its own run time (60 s for 18 runs on 2 cores)

Same protocol as benchmarks.continual (MLP 2x256, Adam 1e-3, batch 64, 300 steps per task).
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from benchmarks.continual import PROTOCOLS
from model_core.config import InputSpec, NetworkSpec, TrainConfig

# (label, strategy, scenario, params)
SWEEPS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("ewc lambda 1e5", "ewc", "task-incremental", {"ewc_lambda": 1e5}),
    ("ewc lambda 1e8", "ewc", "task-incremental", {"ewc_lambda": 1e8}),
    ("ewc lambda 1e9 (default)", "ewc", "task-incremental", {}),
    ("replay without distillation", "replay", "class-incremental", {"distill_alpha": 0.0}),
    ("replay with distillation (default)", "replay", "class-incremental", {}),
    ("generative replay, 500 generator steps", "generative_replay", "class-incremental", {"generator_iterations": 500}),
]


def _run(strategy: str, scenario: str, params: dict[str, Any], seed: int) -> float:
    import torch

    from model_core.data import split_digits
    from model_core.evaluation import run_stream

    torch.set_num_threads(1)
    proto = PROTOCOLS["digits"]
    spec = NetworkSpec(InputSpec("image", 1, 8, 8), backbone="mlp", scenario=scenario, hidden=proto.hidden)  # type: ignore[arg-type]
    config = TrainConfig(iterations=proto.iterations, batch_size=proto.batch_size, lr=proto.lr, seed=seed, device="cpu")
    return run_stream(split_digits(), spec, strategy, config, params).metrics.average_accuracy


def main() -> int:
    start = time.perf_counter()
    jobs = [(s, sc, p, seed) for _, s, sc, p in SWEEPS for seed in range(3)]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        accs = list(pool.map(_run, *zip(*jobs, strict=True)))
    for i, (label, _, scenario, _) in enumerate(SWEEPS):
        runs = accs[3 * i : 3 * i + 3]
        print(f"{label:<42} {scenario:<18} {statistics.mean(runs):.3f} ± {statistics.pstdev(runs):.3f}")
    print(f"{len(jobs)} runs in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
