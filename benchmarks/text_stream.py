"""banking77 as messages through the service with its defaults: learnt from CSV files through the CLI, scored over HTTP.

    python -m benchmarks.text_stream [--tasks 8] [--single 0] [--unknown 10] [--per-intent N]
        [--test-per-intent N] [--clients 1,32] [--seconds 20] [--json FILE]

Starts ``engram serve`` (embedded SQLite, one local worker) on a fresh data folder, creates a text classifier
with every default (``engram classifiers create NAME --text``: the frozen all-MiniLM-L6-v2, 128 tokens, the
default head) and teaches it ``../shared/data/banking77`` intent by intent: the intents in their alphabetical
order less the ``--unknown`` last ones (never learnt), cut into ``--tasks`` tasks (``--single K``: the first K
intents one a task instead, then the rest in ``--tasks`` tasks), each written as a CSV (columns text,label) and
learnt with ``engram learn NAME task.csv --task tN`` as a user would. After each task it predicts the test
messages of the intents learnt so far and of the unknown intents over HTTP, and prints:

- the served accuracy on the learnt intents, and at the end beside ``lr``: an offline logistic regression
  (scikit-learn, standardised) fitted on every training message of the learnt intents at once, on the same
  encoder's embeddings computed in-process by the same tokenizer and ONNX encoder graph the service serves;
- for the unknown intents: the AUROC of the served ``novelty`` (unknown above known), of the served score (MSP,
  the top softmax probability the API returns) and of the energy score (-logsumexp of the same version's served
  logits, from its ``model.onnx`` run in-process on the same token ids), the share of known test messages called
  known, and the share of unknown ones flagged;
- learn seconds per 1,000 messages (the worker's job seconds over the messages sent, held-out share included);
- predict messages/s at each ``--clients`` (one message a request, ``--seconds`` each) against the limit: the
  same tokenizer and the version's ``model.onnx`` called in-process (batches of one message for 1 client, of
  as many messages as clients otherwise), on the same machine.

``--per-intent N`` sends only the first N training messages of each intent (a quick run); ``--test-per-intent``
likewise for the test messages. Figures taken on a shared machine say so where they are quoted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.embeddings import BANKING77
from benchmarks.novelty import auroc
from benchmarks.serve_bench import ADMIN, engram_server

NAME = "banking77"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def _read(part: str) -> list[tuple[str, str]]:
    with (BANKING77 / f"{part}.csv").open(newline="", encoding="utf-8") as fh:
        return [(r["text"], r["category"]) for r in csv.DictReader(fh)]


def _first(rows: list[tuple[str, str]], n: int | None) -> list[tuple[str, str]]:
    if n is None:
        return rows
    seen: dict[str, int] = {}
    out = []
    for text, label in rows:
        if seen.get(label, 0) < n:
            seen[label] = seen.get(label, 0) + 1
            out.append((text, label))
    return out


def plan(intents: list[str], tasks: int, single: int) -> list[list[str]]:
    """The intents of each task: the first ``single`` one a task, the rest cut into ``tasks`` near-equal tasks."""
    head, rest = [[i] for i in intents[:single]], intents[single:]
    size = -(-len(rest) // tasks)
    return head + [rest[i : i + size] for i in range(0, len(rest), size)]


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGRAM_URL": url, "ENGRAM_KEY": ADMIN, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "service.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=7200, check=False)  # fmt: skip


def predict(c: httpx.Client, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
    out, version = [], -1
    for i in range(0, len(texts), 256):
        r = c.post(f"/v1/classifiers/{NAME}/predict", json={"inputs": [{"text": t} for t in texts[i : i + 256]]})
        r.raise_for_status()
        out += r.json()["predictions"]
        version = r.json()["version"]
    return out, version


class Local:
    """The limit: the service's tokenizer and a version's whole graph (``model.onnx``) in this process."""

    def __init__(self, c: httpx.Client, version: int, threads: int = 0) -> None:
        import onnxruntime as ort

        from model_core.text import load_tokenizer, package_file

        path = package_file(ENCODER, "tokenizer")
        assert path is not None
        self.tokenizer = load_tokenizer(path)
        r = c.get(f"/v1/classifiers/{NAME}/versions/{version}/model.onnx")
        r.raise_for_status()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(r.content, options, providers=["CPUExecutionProvider"])

    def ids(self, texts: list[str]) -> np.ndarray:
        return self.tokenizer.encode(texts, 128)[0]

    def logits(self, texts: list[str], batch: int = 256) -> np.ndarray:
        from model_core.text import trim_padding

        parts = []
        for i in range(0, len(texts), batch):
            parts.append(self.session.run(["logits"], {"input": trim_padding(self.ids(texts[i : i + batch]))})[0])
        return np.concatenate(parts)


def energy(logits: np.ndarray) -> np.ndarray:
    """-logsumexp: higher for unknown inputs."""
    m = logits.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))


def offline_lr(train: list[tuple[str, str]], test: list[tuple[str, str]], local: Any, learnt: set[str]) -> float:
    """Logistic regression on the encoder's embeddings (the served backbone graph, in-process) of the learnt intents."""
    import onnxruntime as ort
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from model_core.text import trim_padding

    session = ort.InferenceSession(local.backbone, providers=["CPUExecutionProvider"])

    def embed(rows: list[tuple[str, str]]) -> np.ndarray:
        ids = local.ids([t for t, _ in rows])
        order = np.argsort(-(ids != 0).sum(axis=1), kind="stable")
        out = np.empty((len(ids), 384), dtype=np.float32)
        for i in range(0, len(ids), 128):
            idx = order[i : i + 128]
            out[idx] = session.run(["features"], {"input": trim_padding(ids[idx])})[0]
        return out

    tr = [r for r in train if r[1] in learnt]
    te = [r for r in test if r[1] in learnt]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(embed(tr), [lab for _, lab in tr])
    return float(probe.score(embed(te), [lab for _, lab in te]))


def throughput(url: str, texts: list[str], clients: int, seconds: float) -> float:
    """Messages/s with ``clients`` threads each sending one message a request for ``seconds``."""
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
            i = k
            while time.perf_counter() < stop:
                r = c.post(f"/v1/classifiers/{NAME}/predict", json={"inputs": [{"text": texts[i % len(texts)]}]})
                r.raise_for_status()
                done[k] += 1
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def limit(local: Local, texts: list[str], batch: int, seconds: float) -> float:
    """Messages/s of the tokenizer and the whole graph in-process, ``batch`` messages a call."""
    from model_core.text import trim_padding

    n, i = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [texts[(i + j) % len(texts)] for j in range(batch)]
        local.session.run(["logits"], {"input": trim_padding(local.ids(chunk))})
        n += batch
        i += batch
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--single", type=int, default=0, help="the first K intents one a task")
    ap.add_argument("--unknown", type=int, default=10, help="the last K intents are never learnt")
    ap.add_argument("--per-intent", type=int)
    ap.add_argument("--test-per-intent", type=int)
    ap.add_argument("--clients", default="1,32")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not (BANKING77 / "train.csv").exists():
        print(f"banking77 is not at {BANKING77}: nothing to run")
        return 0
    train, test = _first(_read("train"), args.per_intent), _first(_read("test"), args.test_per_intent)
    intents = sorted({lab for _, lab in train})
    unknown = set(intents[len(intents) - args.unknown :]) if args.unknown else set()
    tasks = plan([i for i in intents if i not in unknown], args.tasks, args.single)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "tasks": []}
    with engram_server("engram-text-stream-") as c, tempfile.TemporaryDirectory() as tmp:
        url = str(c.base_url)
        out = cli(url, "classifiers", "create", NAME, "--text")
        assert out.returncode == 0, out.stdout + out.stderr
        learnt: set[str] = set()
        sent, job_seconds = 0, 0.0
        version = -1
        unknown_texts = [t for t, lab in test if lab in unknown]
        for n, intents_of in enumerate(tasks, start=1):
            path = Path(tmp) / f"t{n}.csv"
            rows = [(t, lab) for t, lab in train if lab in intents_of]
            with path.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["text", "label"])
                w.writerows(rows)
            start = time.perf_counter()
            out = cli(url, "learn", NAME, str(path), "--task", f"t{n}")
            wall = time.perf_counter() - start
            jobs = c.get(f"/v1/classifiers/{NAME}/versions").json()
            job = jobs[-1] if jobs else {}
            status = "promoted" if "promoted" in out.stdout else "rejected" if out.returncode == 3 else "failed"
            job_info = c.get(f"/v1/jobs/{job['job_id']}").json() if job else {}
            secs = job_info.get("seconds") or {}
            worker_s = sum(v for k, v in secs.items() if "." not in k)
            sent += len(rows)
            job_seconds += worker_s
            learnt |= set(intents_of)
            known_rows = [(t, lab) for t, lab in test if lab in learnt]
            preds, version = predict(c, [t for t, _ in known_rows])
            acc = float(np.mean([p["label"] == lab for p, (_, lab) in zip(preds, known_rows, strict=True)]))
            row: dict[str, Any] = {"task": n, "intents": len(intents_of), "messages": len(rows), "status": status,
                                   "version": version, "accuracy": round(acc, 4), "wall_s": round(wall, 1),
                                   "worker_s": round(worker_s, 1), "strategy": job_info.get("strategy")}  # fmt: skip
            if unknown_texts and preds and preds[0]["novelty"] is not None:
                upreds, _ = predict(c, unknown_texts)
                local = Local(c, version)
                k_log, u_log = local.logits([t for t, _ in known_rows]), local.logits(unknown_texts)
                kn = np.array([p["novelty"] for p in preds])
                un = np.array([p["novelty"] for p in upreds])
                row["novelty"] = {
                    "auroc": round(auroc(kn, un), 4),
                    "auroc_msp": round(auroc(-np.array([p["score"] for p in preds]),
                                             -np.array([p["score"] for p in upreds])), 4),
                    "auroc_energy": round(auroc(energy(k_log), energy(u_log)), 4),
                    "known_rate": round(float(np.mean([p["known"] for p in preds])), 4),
                    "unknown_flagged": round(1 - float(np.mean([p["known"] for p in upreds])), 4),
                }
            result["tasks"].append(row)
            print(f"task {n}: {len(intents_of)} intents, {len(rows)} messages: {status} v{version} acc {acc:.4f} "
                  f"({row['wall_s']} s wall, {row['worker_s']} s worker, {row['strategy']}) {row.get('novelty', '')}",
                  flush=True)  # fmt: skip
            if status == "failed":
                print(out.stdout[-2000:], out.stderr[-2000:])
        result["learn_s_per_1000"] = round(job_seconds / max(sent, 1) * 1000, 2)
        print(f"learn: {job_seconds:.1f} worker seconds for {sent} messages: "
              f"{result['learn_s_per_1000']} s per 1,000 messages", flush=True)  # fmt: skip
        local = Local(c, version)
        r = c.get(f"/v1/classifiers/{NAME}/versions/{version}/model.onnx")
        import onnx

        from model_core.graphs import FEATURES

        whole = onnx.load_from_string(r.content)
        backbone = onnx.utils.Extractor(whole).extract_model(["input"], [FEATURES])
        local.backbone = backbone.SerializeToString()  # type: ignore[attr-defined]
        lr = offline_lr(train, test, local, learnt)
        result["final_accuracy"], result["lr"] = result["tasks"][-1]["accuracy"], round(lr, 4)
        print(f"final served accuracy {result['final_accuracy']:.4f}; offline logistic regression on the same "
              f"embeddings {lr:.4f}", flush=True)  # fmt: skip
        texts = [t for t, _ in test]
        speed = []
        for clients in (int(v) for v in args.clients.split(",")):
            served = throughput(url, texts, clients, args.seconds)
            lim = limit(local, texts, 1 if clients == 1 else clients, args.seconds)
            speed.append({"clients": clients, "served_per_s": round(served, 1), "limit_per_s": round(lim, 1),
                          "ratio": round(served / lim, 3)})  # fmt: skip
            print(f"predict at {clients} client(s): {served:.1f} messages/s served, {lim:.1f}/s in-process "
                  f"(limit), {served / lim:.2f}x", flush=True)  # fmt: skip
        result["predict"] = speed
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
