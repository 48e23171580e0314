"""The parameter sweeps behind the defaults in model_core/strategy_specs.py (Split-Digits, 3 seeds).

    python -m benchmarks.sweeps                        # every sweep; prints its own run time
    python -m benchmarks.sweeps --only gr: --backbone cnn   # the generative-replay sweeps on the small CNN

Same protocol as benchmarks.continual (MLP 2x256, Adam 1e-3, batch 64, 300 steps per task).
"""

from __future__ import annotations

import argparse
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
    # generative replay: which generator, and what keeps a classifier from learning "replayed or real"
    ("gr: vae (retrained on its own replay)", "generative_replay", "class-incremental", {"generator": "vae"}),
    ("gr: class gaussians (default)", "generative_replay", "class-incremental", {}),
    ("gr: class gaussians, 1 component", "generative_replay", "class-incremental", {"components": 1}),
    ("gr: class gaussians, rank 4", "generative_replay", "class-incremental", {"rank": 4}),
    ("gr: class gaussians, rank 32", "generative_replay", "class-incremental", {"rank": 32}),
    ("gr: class gaussians, no noise", "generative_replay", "class-incremental", {"noise_scale": 0.0}),
    ("gr: soft targets only", "generative_replay", "class-incremental", {"hard_weight": 0.0}),
    ("gr: hard targets only", "generative_replay", "class-incremental", {"hard_weight": 1.0}),
]


def _run(strategy: str, scenario: str, params: dict[str, Any], seed: int, backbone: str = "mlp") -> float:
    import torch

    from model_core.data import split_digits
    from model_core.evaluation import run_stream

    torch.set_num_threads(1)
    proto = PROTOCOLS["digits"]
    spec = NetworkSpec(InputSpec("image", 1, 8, 8), backbone=backbone, scenario=scenario, hidden=proto.hidden)  # type: ignore[arg-type]
    config = TrainConfig(iterations=proto.iterations, batch_size=proto.batch_size, lr=proto.lr, seed=seed, device="cpu")
    return run_stream(split_digits(), spec, strategy, config, params).metrics.average_accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweeps", description=__doc__)
    parser.add_argument("--only", default="", help="run the sweeps whose label starts with this (e.g. 'gr:')")
    parser.add_argument("--backbone", default="mlp", choices=["mlp", "cnn"], help="the network (8x8 digits)")
    args = parser.parse_args(argv)
    sweeps = [s for s in SWEEPS if s[0].startswith(args.only)]
    start = time.perf_counter()
    jobs = [(s, sc, p, seed, args.backbone) for _, s, sc, p in sweeps for seed in range(3)]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        accs = list(pool.map(_run, *zip(*jobs, strict=True)))
    print(f"Split-Digits 8x8, backbone {args.backbone}, 3 seeds: average accuracy after the last task")
    for i, (label, _, scenario, _) in enumerate(sweeps):
        runs = accs[3 * i : 3 * i + 3]
        print(f"{label:<42} {scenario:<18} {statistics.mean(runs):.3f} ± {statistics.pstdev(runs):.3f}")
    print(f"{len(jobs)} runs in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
