"""ONNX Runtime session options at low and high load, in this process, on one graph (no HTTP):

    python -m benchmarks.ort_options GRAPH.onnx [--rows 1,32] [--seconds 3] [--rounds 5]

GRAPH is any ONNX file with one float input (B, ...), e.g. a shared backbone from an artifact store
(``<data dir>/artifacts/content/sha256/<hex>``) or a version's whole ``model.onnx``. Each option set gets its own
session; the sets run in turn, ``--rounds`` times, ``--seconds`` each, so that a machine's load drifts over all
of them alike. Printed per set and batch size: p50 and p99 of one run (ms) and rows per second, over all rounds.

The sets: ``engram`` (what serving uses: ``service.inference.sessions.session_options``), ``ort-defaults``
(ONNX Runtime's own), ``no-spin`` (the options before this change, ``ENGRAM_ORT_SPIN=0``: one intra-op thread
per usable CPU, worker threads never spin), ``spin`` (spinning as ORT's default, threads as Engram's, without stopping the spin after a
run).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from service.inference.sessions import ServingOptions, session_options
from service.settings import Settings


def option_sets() -> dict[str, ort.SessionOptions | None]:
    options = ServingOptions.from_settings(Settings())
    spin = session_options(options)
    spin.add_session_config_entry("session.force_spinning_stop", "0")  # (a warning says it overwrites the entry)
    return {"engram": session_options(options), "ort-defaults": None,
            "no-spin": session_options(dataclasses.replace(options, spin=False)), "spin": spin}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graph")
    p.add_argument("--rows", default="1,32")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    sessions: dict[str, ort.InferenceSession] = {}
    for name, opts in option_sets().items():
        sessions[name] = ort.InferenceSession(args.graph, opts, providers=["CPUExecutionProvider"])
    first = next(iter(sessions.values()))
    inp = first.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    out = [first.get_outputs()[0].name]
    times: dict[tuple[str, int], list[float]] = {}
    rows = [int(r) for r in args.rows.split(",")]
    for _ in range(args.rounds):
        for n in rows:
            x = np.random.default_rng(0).random((n, *shape), dtype=np.float32)
            for name, session in sessions.items():
                session.run(out, {inp.name: x})  # warm
                got = times.setdefault((name, n), [])
                end = time.perf_counter() + args.seconds
                while (t0 := time.perf_counter()) < end:
                    session.run(out, {inp.name: x})
                    got.append(time.perf_counter() - t0)
                time.sleep(0.2)  # let spinning threads settle between sets
    print(f"{'options':<14}{'rows':>6}{'p50 ms':>9}{'p99 ms':>9}{'rows/s':>10}")
    summary: dict[str, Any] = {}
    for (name, n), t in times.items():
        a = np.asarray(t) * 1000
        summary[f"{name}/{n}"] = (float(np.percentile(a, 50)), float(np.percentile(a, 99)), n * len(a) / (a.sum() / 1000))
    for n in rows:
        for name in sessions:
            p50, p99, rps = summary[f"{name}/{n}"]
            print(f"{name:<14}{n:>6}{p50:>9.2f}{p99:>9.2f}{rps:>10.1f}")


if __name__ == "__main__":
    main()
