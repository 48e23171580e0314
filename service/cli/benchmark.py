"""Class-split streams for every strategy in both scenarios, with joint training on the same network beside them.

    python -m benchmarks.continual                                   # Split-Digits 8x8, every strategy, 3 seeds
    python -m benchmarks.continual --size 28                         # the 8x8 digits as 28x28 PNGs, service preprocessing
    python -m benchmarks.continual --dataset digits-long             # 64-dim vectors, 10 tasks of one class
    python -m benchmarks.continual --dataset cifar10-mini --data-root ../shared/data/cifar10-mini
    python -m benchmarks.continual --dataset mnist-5k                 # 5,000 real 28x28 digits, 70/30 per class
    python -m benchmarks.continual --strategies class_models --params '{"class_models": {"rank": 8}}'
    python -m benchmarks.continual --strategies generative_replay --params '{"generator": "vae"}' --scenarios class-incremental
    python -m benchmarks.continual --dataset mnist --data-root ~/data --download   # van de Ven protocol

Each dataset runs on the backbone a new classifier gets by default for its input (``--backbone`` overrides).
Image datasets reach the network the way the service's do: encoded as PNG or read as JPEG files, decoded and
resized by ``service.inference.inputs`` (the cifar10-mini ImageFolder through the CLI client's own folder reader).
A strategy that cannot run on a stream (``analytic`` without a frozen backbone, ``class_models`` on a large
input that trains its backbone) is skipped with a printed line saying why. Runs are spread over ``--jobs`` processes, each using one torch thread. With a frozen pretrained backbone every
photo's features are computed once, before the runs, and shared by them (as a job computes them once); the
table's seconds per task then exclude feature extraction, which is printed on its own.
"""

from __future__ import annotations

import argparse
import io
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

from model_core.config import SCENARIOS, BackboneSpec, InputSpec, NetworkSpec, TrainConfig, default_backbone


@dataclass(frozen=True)
class Protocol:
    iterations: int
    batch_size: int
    lr: float
    hidden: tuple[int, ...] = (256, 256)


# A fixed number of steps per task (as van de Ven et al. do) rather than epochs, so that joint training costs
# the same per task; 300 steps of 64 is also the service's default for a learn request.
PROTOCOLS = {
    "digits": Protocol(iterations=300, batch_size=64, lr=1e-3),
    "digits-long": Protocol(iterations=300, batch_size=64, lr=1e-3),
    "cifar10-mini": Protocol(iterations=300, batch_size=64, lr=1e-3),
    "mnist-5k": Protocol(iterations=300, batch_size=64, lr=1e-3),
    # van de Ven, Tuytelaars & Tolias (2022): MLP 2x400, Adam 1e-3, batch 128, 2000 iterations per task.
    "mnist": Protocol(iterations=2000, batch_size=128, lr=1e-3, hidden=(400, 400)),
}
ALL_STRATEGIES = ("naive", "joint", "replay", "ewc", "lwf", "mas", "generative_replay", "analytic", "class_models",
                  "agem", "gem", "imm", "packnet", "progressive")


def _encode_png(image: Any) -> bytes:
    """(H, W) float array in [0, 1] -> 8-bit grey PNG bytes, as a client would upload it."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.asarray(image) * 255).round().astype("uint8"), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _decode(blobs: list[bytes], shape: tuple[int, int, int]) -> Any:
    """Image files -> (N, C, H, W) float tensor through the service's own decoder and resizer."""
    import numpy as np
    import torch

    from service.inference.inputs import InputFormat, decode_image

    c, h, w = shape
    network = NetworkSpec(InputSpec("image", c, h, w)).to_dict()
    fmt = InputFormat.from_network(network)
    return torch.from_numpy(np.stack([decode_image(b, fmt, 1 << 26) for b in blobs]))


def load_benchmark(dataset: str, size: int | None, data_root: str | None, download: bool) -> tuple[Any, InputSpec]:
    """The stream and its input spec."""
    import torch

    from model_core.data import Experience, SplitBenchmark, mnist_5k, split_by_classes, split_digits, split_mnist

    if dataset == "mnist-5k":
        try:
            return mnist_5k(data_root), InputSpec("image", 1, 28, 28)
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from exc
    if dataset == "mnist":
        return split_mnist(data_root or ".", download=download), InputSpec("image", 1, 28, 28)
    if dataset == "cifar10-mini":
        return _cifar10_mini(data_root, size or 32)
    bench = split_digits()
    if dataset == "digits-long":  # 64-dim vectors, 10 tasks of one class each

        def flat(exps: list[Experience]) -> list[Experience]:
            x = torch.cat([e.x.reshape(len(e), -1) for e in exps])
            y = torch.cat([torch.tensor([int(e.classes[i]) for i in e.y.tolist()]) for e in exps])
            return split_by_classes(x, y, [[c] for c in range(10)], [str(c) for c in range(10)])

        return SplitBenchmark("digits-long", flat(bench.train), flat(bench.test)), InputSpec("vector", dim=64)
    if size is None or size == 8:
        return bench, InputSpec("image", 1, 8, 8)

    def resized(exps: list[Experience]) -> list[Experience]:
        return [Experience(e.task, _decode([_encode_png(img[0]) for img in e.x.numpy()], (1, size, size)), e.y,
                           e.classes) for e in exps]  # fmt: skip

    return SplitBenchmark(f"split-digits-{size}", resized(bench.train), resized(bench.test)), InputSpec(
        "image", 1, size, size
    )


def _cifar10_mini(root: str | None, size: int) -> tuple[Any, InputSpec]:
    from pathlib import Path

    import torch

    from model_core.data import SplitBenchmark, split_by_classes
    from service.client import read_image_folder

    if not root or not (Path(root) / "train").is_dir():
        raise SystemExit(f"cifar10-mini not found at {root!r}: pass --data-root ../shared/data/cifar10-mini")
    parts = []
    names: list[str] = []
    for split in ("train", "test"):
        items = read_image_folder(Path(root) / split)  # the CLI's own ImageFolder reader
        names = sorted({label for label, _ in items})
        x = _decode([blob for _, blob in items], (3, size, size))
        y = torch.tensor([names.index(label) for label, _ in items])
        parts.append(split_by_classes(x, y, [[2 * t, 2 * t + 1] for t in range(5)], names))
    return SplitBenchmark("split-cifar10-mini", parts[0], parts[1]), InputSpec("image", 3, size, size)


def network_spec(inp: InputSpec, scenario: str, backbone: str | None, protocol: Protocol) -> NetworkSpec:
    spec = BackboneSpec.parse(json.loads(backbone) if backbone and backbone.startswith("{") else
                              backbone or default_backbone(inp))  # fmt: skip
    return NetworkSpec(inp, backbone=spec, scenario=scenario, hidden=protocol.hidden)  # type: ignore[arg-type]


_SHARED: dict[str, Any] = {}  # set in each worker process: the stream and precomputed features


def _init(dataset: str, size: int | None, data_root: str | None, download: bool, features: dict[bytes, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    _SHARED["bench"], _SHARED["input"] = load_benchmark(dataset, size, data_root, download)
    _SHARED["features"] = features


def _one_run(
    dataset: str, strategy: str, scenario: str, seed: int, device: str, backbone: str | None, params: dict[str, Any]
) -> dict[str, Any]:
    from model_core.evaluation import run_stream

    proto = PROTOCOLS[dataset]
    bench, inp = _SHARED["bench"], _SHARED["input"]
    spec = network_spec(inp, scenario, backbone, proto)
    config = TrainConfig(iterations=proto.iterations, batch_size=proto.batch_size, lr=proto.lr, seed=seed,
                         device=device)  # fmt: skip
    try:  # features computed once for every run (empty unless the backbone is frozen)
        result = run_stream(bench, spec, strategy, config, params.get(strategy), features=_SHARED["features"])
    except ValueError as exc:  # a strategy that refuses the stream says why (e.g. analytic without a frozen backbone)
        return {"strategy": strategy, "scenario": scenario, "seed": seed, "skipped": str(exc)}
    m = result.metrics
    return {
        "strategy": strategy, "scenario": scenario, "seed": seed, "acc": m.average_accuracy, "bwt": m.bwt,
        "forgetting": statistics.mean(m.forgetting) if m.forgetting else 0.0,
        "matrix": [[None if math.isnan(v) else round(v, 4) for v in row] for row in m.matrix],
        "seconds_per_task": statistics.mean(result.task_seconds), "backbone": spec.backbone.name,
    }  # fmt: skip


def precompute_features(dataset: str, size: int | None, data_root: str | None, backbone: str | None,
                        device: str, cache: str | None = None) -> tuple[dict[bytes, Any], float]:  # fmt: skip
    """Frozen-backbone features of every train and test sample, computed once (empty when the backbone trains).

    With ``cache`` (a folder), they are kept there under a digest of the backbone and read back by later runs.
    """
    from pathlib import Path

    import torch

    from model_core.learner import Learner

    bench, inp = load_benchmark(dataset, size, data_root, False)
    learner = Learner.create(network_spec(inp, SCENARIOS[0], backbone, PROTOCOLS[dataset]))
    if not learner.frozen_backbone:
        return {}, 0.0
    path = None
    if cache is not None:
        from model_core.export_frozen import backbone_digest

        path = Path(cache) / f"features-{dataset}-{size or 0}-{backbone_digest(learner)}.pt"
        if path.exists():  # keys (N, 16) uint8 input digests, values (N, F)
            saved = torch.load(path, weights_only=True)
            return {bytes(k.tolist()): v for k, v in zip(saved["keys"], saved["values"], strict=True)}, 0.0
    start = time.perf_counter()
    for exp in [*bench.train, *bench.test]:
        learner.features(exp.x, device=device)
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = torch.tensor([list(k) for k in learner.feature_cache], dtype=torch.uint8)
        torch.save({"keys": keys, "values": torch.stack(list(learner.feature_cache.values()))}, path)
    return dict(learner.feature_cache), seconds


def summarise_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (strategy, scenario): mean/std over seeds, with joint training's mean beside it."""
    rows = []
    keys = sorted({(r["strategy"], r["scenario"]) for r in runs},
                  key=lambda k: (SCENARIOS.index(k[1]), ALL_STRATEGIES.index(k[0])))  # fmt: skip
    joint = {sc: statistics.mean(r["acc"] for r in runs if r["strategy"] == "joint" and r["scenario"] == sc)
             for sc in SCENARIOS if any(r["strategy"] == "joint" and r["scenario"] == sc for r in runs)}  # fmt: skip
    for strategy, scenario in keys:
        group = [r for r in runs if r["strategy"] == strategy and r["scenario"] == scenario]
        accs = [r["acc"] for r in group]
        rows.append({
            "strategy": strategy, "scenario": scenario, "seeds": [r["seed"] for r in group],
            "acc_mean": statistics.mean(accs), "acc_std": statistics.pstdev(accs), "joint": joint.get(scenario),
            "bwt_mean": statistics.mean(r["bwt"] for r in group),
            "forgetting_mean": statistics.mean(r["forgetting"] for r in group),
            "seconds_per_task": statistics.mean(r["seconds_per_task"] for r in group), "runs": group,
        })  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in (
        "strategy",
        "scenario",
        "avg acc (mean ± std)",
        "joint",
        "acc - joint",
        "BWT",
        "forgetting",
        "s / task",
    ):
        table.add_column(col, justify="left" if col in ("strategy", "scenario") else "right")
    for r in rows:
        joint = r["joint"]
        table.add_row(
            r["strategy"], r["scenario"], f"{r['acc_mean']:.3f} ± {r['acc_std']:.3f}",
            "-" if joint is None else f"{joint:.3f}", "-" if joint is None else f"{r['acc_mean'] - joint:+.3f}",
            f"{r['bwt_mean']:+.3f}", f"{r['forgetting_mean']:.3f}", f"{r['seconds_per_task']:.2f}",
        )  # fmt: skip
    Console(width=140).print(table)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(PROTOCOLS), default="digits")
    parser.add_argument("--size", type=int, help="digits: side in pixels the 8x8 digits are resized to; "
                        "cifar10-mini: the classifier's declared side (default 32)")  # fmt: skip
    parser.add_argument("--data-root", help="MNIST folder (torchvision layout) or the cifar10-mini ImageFolder root")
    parser.add_argument("--download", action="store_true", help="let torchvision download MNIST into --data-root")
    parser.add_argument("--backbone", help="a backbone name or a JSON backbone spec; default: the input's default")
    parser.add_argument("--strategies", default=",".join(ALL_STRATEGIES), help="joint always runs beside them")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--params", default="{}", help="JSON parameters for generative_replay, or JSON keyed by "
                        "strategy name: {\"class_models\": {\"rank\": 8}}")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds: 0..N-1")
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8), help="parallel runs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--json", dest="json_path", help="also write the rows as a JSON list")
    parser.add_argument("--feature-cache", help="folder keeping frozen-backbone features between runs")
    return parser


def _run_all(args: argparse.Namespace, tasks: list[tuple[Any, ...]], features: dict[bytes, Any]) -> list[dict[str, Any]]:
    """Every (strategy, scenario, seed) run, over ``--jobs`` spawned processes (each with the stream loaded once)."""
    init = (args.dataset, args.size, args.data_root, args.download, features)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=_init, initargs=init) as pool:
            return list(pool.map(_one_run, *zip(*tasks, strict=True)))
    _init(*init)
    return [_one_run(*t) for t in tasks]


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.continual") -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    strategies = list(dict.fromkeys([*(s for s in args.strategies.split(",") if s), "joint"]))
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in strategies:
        if s not in ALL_STRATEGIES:
            parser.error(f"unknown strategy {s!r}; choose from {', '.join(ALL_STRATEGIES)}")
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    if args.dataset == "mnist" and not args.data_root:
        parser.error("--dataset mnist needs --data-root")

    if args.json_path:  # a folder in the path is made now, not found missing after minutes of runs
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
    features, feature_seconds = precompute_features(args.dataset, args.size, args.data_root, args.backbone,
                                                    args.device, args.feature_cache)  # fmt: skip
    params = json.loads(args.params)
    if not all(k in ALL_STRATEGIES for k in params):  # the older form: generative_replay's parameters
        params = {"generative_replay": params}
    order = sorted(strategies, key=lambda s: s != "generative_replay")  # slowest first
    tasks = [(args.dataset, st, sc, seed, args.device, args.backbone, params)
             for st in order for sc in scenarios for seed in range(args.seeds)]  # fmt: skip
    start = time.perf_counter()
    runs = _run_all(args, tasks, features)
    wall = time.perf_counter() - start
    skipped = {(r["strategy"], r["scenario"]): r["skipped"] for r in runs if "skipped" in r}
    for (strategy, scenario), reason in sorted(skipped.items()):
        print(f"skipped {strategy} ({scenario}) on {args.dataset}: {reason}")
    runs = [r for r in runs if "skipped" not in r]
    rows = summarise_runs(runs)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)
    if not runs:
        print("no strategy could run on this stream")
        return 0
    size = f" at {args.size}x{args.size}" if args.size else ""
    print_table(rows, f"{args.dataset}{size}, backbone {runs[0]['backbone']}: average accuracy after the last task, "
                      f"{args.seeds} seed(s), params {params or 'default'}")  # fmt: skip
    if features:
        how = f"computed once in {feature_seconds:.1f} s" if feature_seconds else "read from --feature-cache"
        print(f"frozen-backbone features of {len(features)} samples {how}")
    print(f"{len(runs)} runs in {wall:.1f} s wall time on {args.jobs} process(es), device {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
