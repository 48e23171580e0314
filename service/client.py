"""A typed Python client for Engram's HTTP API (what the ``engram`` CLI and the tests use).

from service.client import EngramClient
client = EngramClient("http://127.0.0.1:8000", key="...")
job = client.learn_folder("digits", "photos/", task="cats-and-dogs", strategy="generative_replay")
job = client.wait(job.job_id, on_progress=print)
print(client.predict_files("digits", ["x.png"]).predictions[0].label)
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

from service.schemas import (
    TERMINAL,
    AuditView,
    CapturedInputs,
    ClassifierView,
    DeleteResult,
    JobView,
    Prediction,
    PredictResult,
    PruneResult,
    Ranked,
    RetentionView,
    StorageUsage,
    VersionView,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# The server's own response models (``service.schemas``: pydantic only, no Litestar). They are closed
# (extra="forbid") to pin what the server sends; ``_read`` validates with extra="ignore" so that a client
# keeps working against a newer server that adds fields.
Classifier = ClassifierView
Version = VersionView
AuditEntry = AuditView
__all__ = ["TERMINAL", "AuditEntry", "Classifier", "EngramClient", "EngramError", "Job", "PredictResult", "Prediction",
           "Ranked", "Version", "read_image_folder", "read_messages"]  # fmt: skip
M = TypeVar("M", bound=BaseModel)


class Job(JobView):
    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def _read(model: type[M], data: Any) -> M:
    return model.model_validate(data, extra="ignore")


class EngramError(Exception):
    """An error answer from the server (problem+json), or no answer at all."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status, self.detail = status, detail


def read_image_folder(folder: str | Path) -> list[tuple[str, bytes]]:
    """An ImageFolder-style tree (one subfolder per class, images inside) -> [(label, image bytes)]."""
    root = Path(folder)
    if not root.is_dir():
        raise EngramError(0, f"{root} is not a folder")
    out = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                out.append((class_dir.name, f.read_bytes()))
    if not out:
        raise EngramError(0, f"{root} has no class subfolders with images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return out


MESSAGE_SUFFIXES = (".csv", ".jsonl", ".ndjson")


def read_messages(path: str | Path, labelled: bool = True) -> list[dict[str, str]]:
    """A CSV file with a header naming ``text`` and ``label`` columns (others ignored), or JSON Lines of
    ``{"text": ..., "label": ...}`` -> learn samples. ``labelled=False``: only ``text`` is read (predict)."""
    import csv

    p = Path(path)
    if not p.is_file():
        raise EngramError(0, f"{p} is not a file")
    want = ("text", "label") if labelled else ("text",)
    rows: list[dict[str, Any]] = []
    try:
        if p.suffix.lower() == ".csv":
            with p.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = [c for c in want if c not in (reader.fieldnames or [])]
                if missing:
                    raise EngramError(0, f"{p}: the header has no {', '.join(missing)} column (columns: text,label)")
                rows = list(reader)
        else:
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        raise EngramError(0, f"{p} line {n}: not a JSON object") from None
    except UnicodeDecodeError:
        raise EngramError(0, f"{p} is not UTF-8 text") from None
    out = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or any(not isinstance(row.get(c), str) or not row[c].strip() for c in want):
            raise EngramError(0, f"{p} row {n}: needs {' and '.join(repr(c) for c in want)}, each a non-empty string")
        out.append({c: str(row[c]) for c in want})
    if not out:
        raise EngramError(0, f"{p} has no messages")
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _options(top_k: int, task: str | None, version: int | None) -> dict[str, Any]:
    """The query parameters of ``POST .../predict/binary``."""
    params: dict[str, Any] = {"top_k": top_k}
    if task is not None:
        params["task"] = task
    if version is not None:
        params["version"] = version
    return params


class EngramClient:
    def __init__(self, url: str, key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EngramClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise EngramError(0, f"cannot reach {self._http.base_url}: {exc}") from None
        if r.status_code >= 400:
            self._raise(r)
        return r.json()

    @staticmethod
    def _raise(r: httpx.Response) -> NoReturn:
        try:
            body = r.json()
            detail = str(body.get("detail") or body.get("title"))
        except ValueError:
            detail = r.text[:500]
        raise EngramError(r.status_code, detail)

    # classifiers
    def create_classifier(self, name: str, input: dict[str, Any], scenario: str = "class-incremental",
                          backbone: str | dict[str, Any] | None = None, gate: dict[str, Any] | None = None,
                          unknowns: dict[str, Any] | None = None) -> Classifier:  # fmt: skip
        body: dict[str, Any] = {"name": name, "input": input, "scenario": scenario}
        if backbone:
            body["backbone"] = backbone
        if gate:
            body["gate"] = gate
        if unknowns:
            body["unknowns"] = unknowns
        return _read(Classifier, self._call("POST", "/v1/classifiers", json=body))

    def classifiers(self) -> list[Classifier]:
        return [_read(Classifier, c) for c in self._call("GET", "/v1/classifiers")]

    def classifier(self, name: str) -> Classifier:
        return _read(Classifier, self._call("GET", f"/v1/classifiers/{name}"))

    # learning
    def learn(self, name: str, task: str, strategy: str | None, samples: list[dict[str, Any]], retention: str = "keep",
              **extra: Any) -> Job:  # fmt: skip
        """``extra``: eval_samples, options, params, gate (see the API)."""
        body = {"task": task, "strategy": strategy, "retention": retention, "samples": samples, **extra}
        return _read(Job, self._call("POST", f"/v1/classifiers/{name}/learn", json=body))

    def learn_folder(
        self, name: str, folder: str | Path, task: str, strategy: str | None = None, retention: str = "keep", **extra: Any
    ) -> Job:
        samples = [{"label": label, "image_b64": b64(data)} for label, data in read_image_folder(folder)]
        return self.learn(name, task, strategy, samples, retention, **extra)

    def learn_messages(self, name: str, messages: str | Path | list[dict[str, str]], task: str,
                       strategy: str | None = None, retention: str = "keep", **extra: Any) -> Job:  # fmt: skip
        """A text classifier learns messages: a CSV (columns text,label) or JSON Lines file, or a list of
        ``{"text": ..., "label": ...}``."""
        samples = messages if isinstance(messages, list) else read_messages(messages)
        return self.learn(name, task, strategy, samples, retention, **extra)

    def job(self, job_id: str) -> Job:
        return _read(Job, self._call("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        return _read(Job, self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait(
        self, job_id: str, on_progress: Callable[[Job], None] | None = None, poll: float = 0.5, timeout: float = 3600
    ) -> Job:
        """Follow the job's server-sent events until it ends; ``on_progress`` sees every state the server sends.
        A stream that breaks (a restarted server, a proxy's idle timeout) is read again after ``poll`` seconds,
        from the job's state then."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                for job in self._events(job_id, deadline):
                    if on_progress is not None:
                        on_progress(job)
                    if job.done:
                        return job
            except httpx.TransportError:
                pass  # the stream broke; read it again below
            if time.monotonic() > deadline:
                job = self.job(job_id)
                raise EngramError(0, f"job {job_id} still {job.status} after {timeout:.0f} s")
            time.sleep(poll)

    def _events(self, job_id: str, deadline: float) -> Iterator[Job]:
        """The jobs the events stream of ``job_id`` carries, until it ends or ``deadline`` passes."""
        read = httpx.Timeout(self._http.timeout.connect, read=max(1.0, deadline - time.monotonic()))
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=read) as r:
            if r.status_code >= 400:
                r.read()
                self._raise(r)
            data: list[str] = []
            for line in r.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:  # a blank line ends an event
                    yield _read(Job, json.loads("\n".join(data)))
                    data = []

    # serving
    def predict(self, name: str, inputs: list[dict[str, Any]], top_k: int = 1, task: str | None = None,
                version: int | None = None) -> PredictResult:  # fmt: skip
        body: dict[str, Any] = {"inputs": inputs, "top_k": top_k}
        if task is not None:
            body["task"] = task
        if version is not None:
            body["version"] = version
        return _read(PredictResult, self._call("POST", f"/v1/classifiers/{name}/predict", json=body))

    def predict_texts(self, name: str, texts: Sequence[str], top_k: int = 1, task: str | None = None,
                      version: int | None = None) -> PredictResult:  # fmt: skip
        """Messages to a text classifier: one prediction each, in order."""
        return self.predict(name, [{"text": t} for t in texts], top_k, task, version)

    def predict_files(self, name: str, paths: Sequence[str | Path], **kwargs: Any) -> PredictResult:
        """Image files, sent as they are (multipart, no base64)."""
        return self.predict_images(name, [Path(p).read_bytes() for p in paths], **kwargs)

    def predict_images(self, name: str, images: Sequence[bytes], top_k: int = 1, task: str | None = None,
                       version: int | None = None) -> PredictResult:  # fmt: skip
        """Encoded images (PNG, JPEG...) as one multipart body: ``POST .../predict/binary``."""
        files = [("file", (f"{i}", data, "application/octet-stream")) for i, data in enumerate(images)]
        answer = self._call("POST", f"/v1/classifiers/{name}/predict/binary", files=files,
                            params=_options(top_k, task, version))  # fmt: skip
        return _read(PredictResult, answer)

    def predict_array(self, name: str, rows: np.ndarray, top_k: int = 1, task: str | None = None,
                      version: int | None = None) -> PredictResult:  # fmt: skip
        """(N, *input shape) rows as one ``.npy`` body: float32/float64 as the model takes them ([0, 1]
        pixels), or uint8 raw pixels of image classifiers. ``POST .../predict/binary``."""
        buf = io.BytesIO()
        np.save(buf, rows, allow_pickle=False)
        answer = self._call("POST", f"/v1/classifiers/{name}/predict/binary", content=buf.getvalue(),
                            headers={"content-type": "application/x-npy"}, params=_options(top_k, task, version))  # fmt: skip
        return _read(PredictResult, answer)

    # versions
    def versions(self, name: str) -> list[Version]:
        return [_read(Version, v) for v in self._call("GET", f"/v1/classifiers/{name}/versions")]

    def version(self, name: str, number: int) -> Version:
        return _read(Version, self._call("GET", f"/v1/classifiers/{name}/versions/{number}"))

    def promote(self, name: str, number: int, force: bool = False, reason: str | None = None) -> Version:
        body = {"force": force, "reason": reason}
        return _read(Version, self._call("POST", f"/v1/classifiers/{name}/versions/{number}/promote", json=body))

    def rollback(self, name: str, to_version: int | None = None, reason: str | None = None) -> Version:
        body = {"to_version": to_version, "reason": reason}
        return _read(Version, self._call("POST", f"/v1/classifiers/{name}/rollback", json=body))

    # inputs flagged unknown (capture)
    def unknowns(self, name: str) -> CapturedInputs:
        return _read(CapturedInputs, self._call("GET", f"/v1/classifiers/{name}/unknowns"))

    def delete_unknowns(self, name: str, through_id: int) -> int:
        return int(self._call("DELETE", f"/v1/classifiers/{name}/unknowns", params={"through": through_id})["deleted"])

    def export_unknowns(self, name: str, folder: str | Path) -> tuple[Path, int]:
        """Write the captured inputs into ``folder``/unsorted (PNG images, or .npy vectors) and delete them on the
        server once written: (the folder, how many). Sort the files into one subfolder per class to learn them.
        Messages go to ``folder``/unknowns.csv instead (columns text,label,novelty,version; label empty): fill in
        the labels and learn the file (``learn_messages``)."""
        captured = self.unknowns(name)
        if captured.items and captured.items[0].text is not None:
            return self._export_messages(name, captured, Path(folder))
        out = Path(folder) / "unsorted"
        out.mkdir(parents=True, exist_ok=True)
        for item in captured.items:
            stem = f"v{item.version}-{item.id:08d}"
            if item.image_b64 is not None:
                (out / f"{stem}.png").write_bytes(base64.b64decode(item.image_b64))
            else:
                np.save(out / f"{stem}.npy", np.asarray(item.vector, dtype=np.float32))
        if captured.items:
            self.delete_unknowns(name, captured.items[-1].id)
        return out, len(captured.items)

    def _export_messages(self, name: str, captured: CapturedInputs, folder: Path) -> tuple[Path, int]:
        import csv

        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "unknowns.csv"
        new = not out.exists()
        with out.open("a", newline="", encoding="utf-8") as f:  # appended: an earlier export's rows stay
            w = csv.writer(f)
            if new:
                w.writerow(["text", "label", "novelty", "version"])
            for item in captured.items:
                w.writerow([item.text, "", item.novelty, item.version])
        self.delete_unknowns(name, captured.items[-1].id)
        return out, len(captured.items)

    def audit(self, name: str) -> list[AuditEntry]:
        return [_read(AuditEntry, a) for a in self._call("GET", f"/v1/classifiers/{name}/audit")]

    # lifecycle: retention, prune, delete, sizes
    def prune(self, name: str, dry_run: bool = False) -> PruneResult:
        params = {"dry_run": "true" if dry_run else "false"}
        return _read(PruneResult, self._call("POST", f"/v1/classifiers/{name}/prune", params=params))

    def delete_classifier(self, name: str) -> DeleteResult:
        return _read(DeleteResult, self._call("DELETE", f"/v1/classifiers/{name}"))

    def retention(self, name: str) -> RetentionView:
        return _read(RetentionView, self._call("GET", f"/v1/classifiers/{name}/retention"))

    def set_retention(self, name: str, keep_ancestors: int | None = None, keep_days: float | None = None) -> RetentionView:
        body = {k: v for k, v in {"keep_ancestors": keep_ancestors, "keep_days": keep_days}.items() if v is not None}
        return _read(RetentionView, self._call("PUT", f"/v1/classifiers/{name}/retention", json=body))

    def reset_retention(self, name: str) -> RetentionView:
        return _read(RetentionView, self._call("DELETE", f"/v1/classifiers/{name}/retention"))

    def storage(self) -> dict[str, StorageUsage]:
        return {k: _read(StorageUsage, v) for k, v in self._call("GET", "/v1/storage").items()}
