"""Start the servers ``benchmarks.serve_bench`` compares Engram with, on one trained version's bundle.

- **BentoML** 1.4 (``benchmarks.bento_service``): adaptive batching, the version's ONNX file.
- **TorchServe** 0.12 (``benchmarks.torchserve_handler``): the version's weights traced to TorchScript,
  server-side batching (``batch_size`` 64, ``max_batch_delay`` 2 ms), one Python worker. Needs Java 17+.

Both come from the ``bench`` extra (``pip install -e '.[bench]'``), never from the runtime dependencies.
Each function returns the process and the URL path that takes serve_bench's predict body.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

TS_BATCH, TS_DELAY_MS = 64, 2  # TorchServe: rows per batch (as Engram), ms it waits to fill one


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise RuntimeError(f"{name} is not installed: pip install -e '.[bench]'")
    return str(path)


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}; see its log")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready in {timeout:.0f} s")


def start_bentoml(bundle: Path, port: int, workdir: Path, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "ENGRAM_BENCH_BUNDLE": str(bundle), "BENTOML_HOME": str(workdir / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # fmt: skip
    proc = subprocess.Popen([_bin("bentoml"), "serve", "benchmarks.bento_service:OnnxClassifier", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    _wait(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, "/predict"


def torchscript(bundle: Path, out: Path) -> dict[str, object]:
    """Trace the bundle's network (normalisation included) to ``out``/model.pt; returns its meta.json."""
    import torch

    from model_core.checkpoint import load_bundle

    learner, manifest = load_bundle(bundle)
    inp = manifest.network["input"]
    model = learner.model.eval()
    example = torch.rand(2, inp["channels"], inp["height"], inp["width"])
    with torch.inference_mode():
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(out / "model.pt"))
    meta = {"input": inp, "labels": list(manifest.labels)}
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


def start_torchserve(
    bundle: Path, port: int, workdir: Path, log: IO[bytes], threads: int
) -> tuple[subprocess.Popen[bytes], str]:
    if shutil.which("java") is None:
        raise RuntimeError("TorchServe needs a Java runtime (Debian: apt-get install openjdk-17-jre-headless)")
    root = workdir / "torchserve"
    store = root / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    torchscript(bundle, root)
    handler = Path(__file__).resolve().parent / "torchserve_handler.py"
    subprocess.run([_bin("torch-model-archiver"), "--model-name", "peer", "--version", "1", "--serialized-file",
                    str(root / "model.pt"), "--handler", str(handler), "--extra-files", str(root / "meta.json"),
                    "--export-path", str(store), "--force"], check=True, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    mport = port + 1 if port < 65000 else port - 1
    config = root / "config.properties"
    config.write_text("\n".join([
        f"inference_address=http://127.0.0.1:{port}", f"management_address=http://127.0.0.1:{mport}",
        "metrics_mode=prometheus", "disable_system_metrics=true", "install_py_dep_per_model=false",
        f"model_store={store}", "default_workers_per_model=1", "job_queue_size=1000", "number_of_netty_threads=2",
        "enable_metrics_api=false", "disable_token_authorization=true", "enable_model_api=true",
    ]) + "\n")  # fmt: skip
    metrics_port = mport + 1 if mport < 65000 else mport - 2
    env = {**os.environ, "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics_port}", "OMP_NUM_THREADS": str(threads),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "LOG_LOCATION": str(root / "logs"),
           "METRICS_LOCATION": str(root / "logs")}  # fmt: skip
    proc = subprocess.Popen([_bin("torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
                             "--ts-config", str(config), "--model-store", str(store)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            start_new_session=True)  # its own process group: the JVM and workers stop with it  # fmt: skip
    _wait(f"http://127.0.0.1:{port}/ping", proc)
    r = httpx.post(f"http://127.0.0.1:{mport}/models", timeout=300, params={
        "url": "peer.mar", "batch_size": TS_BATCH, "max_batch_delay": TS_DELAY_MS, "initial_workers": 1,
        "synchronous": "true"})  # fmt: skip
    if r.status_code != 200:
        raise RuntimeError(f"TorchServe refused the model: {r.status_code} {r.text[:500]}")
    return proc, "/predictions/peer"


def stop_torchserve(proc: subprocess.Popen[bytes]) -> None:
    """The ``torchserve`` launcher starts a JVM, which starts Python workers; a SIGTERM to the launcher
    alone leaves the JVM running (and its pid file makes the next start fail). So the whole process group
    gets SIGTERM, then SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()  # reaps the launcher, so that a zombie does not keep its group "alive"
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            break
    proc.wait()
    with contextlib.suppress(FileNotFoundError):
        Path("/tmp/.model_server.pid").unlink()  # TorchServe's own pid file, left behind by a killed JVM


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
