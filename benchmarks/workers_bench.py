"""How many serving processes (``engram serve --workers N``) to run: N values measured side by side.

    python -m benchmarks.workers_bench [--workers 1,2,3] [--levels 1,32,64] [--rounds 3] [--seconds 3]

Trains the ``serve_bench`` model once, then starts one server per N on copies of that data folder (the
same trained version, no worker) and drives them in turn, round after round, with the same requests as
serve_bench. Alternating in short rounds means every N sees the same background load, which a machine
shared with other work makes necessary; the figures are the sums over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sklearn.datasets import load_digits

from benchmarks.serve_bench import ADMIN, MODELS, digit_png, free_port, stop, train, wait_ready
from service.cli.loadgen import LoadResult, run_load


def start(data_dir: Path, workers: int, log: Any, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "ENGRAM_API_KEYS": f"admin:{ADMIN}"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli.main", "serve", "--data-dir", str(data_dir), "--port",
                             str(port), "--workers", str(workers), *extra], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, "/readyz")
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description="serving processes side by side (see module docstring)")
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--levels", default="1,32,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--model", default="small", choices=sorted(MODELS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    case = MODELS[args.model]
    digits = load_digits()
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[int, dict[int, LoadResult]] = {n: {} for n in counts}
    with tempfile.TemporaryDirectory(prefix="engram-workers-") as tmp, open(Path(tmp) / "log", "wb") as log:
        base = Path(tmp) / "trained"
        proc, url = start(base, 1, log)
        try:
            train(url, case, digits.images, digits.target)
        finally:
            stop(proc)
        servers = {}
        try:
            for n in counts:
                shutil.copytree(base, Path(tmp) / f"n{n}")
                servers[n] = start(Path(tmp) / f"n{n}", n, log, "--no-worker")
            bodies = [json.dumps({"inputs": [{"image_b64": digit_png(img, case.input)}]}).encode()
                      for img in digits.images[-256:]]  # fmt: skip
            path = f"/v1/classifiers/{case.name}/predict"
            auth = {"Authorization": f"Bearer {ADMIN}"}
            for level in (int(v) for v in args.levels.split(",")):
                for _ in range(args.rounds):
                    for n in counts:
                        r = run_load(servers[n][1], path, bodies, level, args.seconds, 0.5, auth)
                        total = results[n].setdefault(level, LoadResult(level, 0.0))
                        total.latencies += r.latencies
                        total.seconds += r.seconds
                        total.error_count += r.error_count
        finally:
            for proc, _ in servers.values():
                stop(proc)
    print(f"\n{case.name}: {args.rounds} rounds of {args.seconds:g} s per N and level, alternating; "
          f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print(f"{'clients':>8}" + "".join(f"{f'N={n} req/s (p50/p99 ms)':>30}" for n in counts))
    out = []
    for level in results[counts[0]]:
        cells = []
        for n in counts:
            s = results[n][level].summary()
            cells.append(f"{s['rps']:>8.1f} ({s['p50_ms']:.1f} / {s['p99_ms']:.1f}, {s['errors']} err)")
            out.append({"workers": n, **s})
        print(f"{level:>8}" + "".join(f"{c:>30}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
