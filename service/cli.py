"""The ``engram`` command. Until the HTTP service lands it offers the engine's own tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _strategies(_: argparse.Namespace) -> int:
    from model_core.strategies import STRATEGIES

    for name, cls in sorted(STRATEGIES.items()):
        notes = []
        if cls.stores_data:
            notes.append("keeps training samples")
        if not cls.adds_classes:
            notes.append("cannot add classes to one head (class-incremental)")
        print(f"{name}: {json.dumps(cls.defaults)}" + (f"  [{'; '.join(notes)}]" if notes else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    from model_core.checkpoint import load_bundle
    from model_core.export import export_onnx

    learner, _ = load_bundle(args.bundle)
    result = export_onnx(learner)
    Path(args.output).write_bytes(result.onnx)
    print(f"wrote {args.output} ({len(result.onnx)} bytes); max |onnx - torch| = {result.max_abs_diff:.2e}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    try:
        from benchmarks.continual import main as bench_main
    except ImportError:
        print("the benchmarks live in the source tree: run this from a checkout of engram", file=sys.stderr)
        return 2
    return bench_main(args.rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engram", description="Engram: an incremental-classifier service.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("strategies", help="list the learning strategies and their parameters").set_defaults(
        func=_strategies
    )
    exp = sub.add_parser("export", help="export a checkpoint bundle to ONNX (with a parity check)")
    exp.add_argument("bundle")
    exp.add_argument("output")
    exp.set_defaults(func=_export)
    bench = sub.add_parser("benchmark", help="run the continual-learning benchmark (python -m benchmarks.continual)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_benchmark)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
