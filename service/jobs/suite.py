"""A version's regression suite (every task's evaluation samples so far): written once per task, read in both
layouts.

Before: each version's folder held ``eval.npz``, every task's samples again as float32 (x, label, task), so a
classifier's store grew with the square of its tasks. Now each job's evaluation samples are one *segment*,
stored once as content (``ArtifactStore.put_content``) and referenced from the manifest of this version and of
every later one, in order:

    references["eval/0000"] = {"sha256", "size", "kind": "eval-samples", "index": 0, "task": "t1",
                               "samples": 120, "encoding": "uint8" | "float32"}

A segment is an npz: ``label`` (str) and either ``x`` (float32, as decoded) or ``pixels`` (uint8) with
``pixel_scale``: images whose float values are exactly ``pixels / pixel_scale`` in float32, as the decoder
(``service.inference.inputs.decode_image``) makes them from 8-bit images, are kept as their pixels, a quarter of
the bytes, and read back to the same float32 bits. Anything else (vectors, 16-bit images) stays float32.

A reader concatenates the segments in ``index`` order: the same arrays, in the same order, as the old
``eval.npz`` held, so the gate sees exactly what it saw before. A version whose parent has the old layout
splits the parent's ``eval.npz`` into segments (one per run of a task) once, as it writes its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.storage.base import arrays_to_bytes, bytes_to_arrays

EVAL_FILE = "eval.npz"  # the old layout: the version's whole regression suite, x, label, task for every task
KIND = "eval-samples"  # the references' kind
PREFIX = "eval/"  # the references' roles: eval/<index>, four digits

Suite = dict[str, np.ndarray]
Ref = dict[str, Any]


def as_pixels(x: np.ndarray, scale: float) -> np.ndarray | None:
    """``x`` (float32) as uint8 pixels when ``pixels.astype(float32) / float32(scale)`` gives back its exact bits;
    None when not (vectors, 16-bit images, anything not decoded from 8-bit pixels)."""
    if x.dtype != np.float32 or x.size == 0 or not scale > 0:
        return None
    scaled = np.rint(x.astype(np.float64) * scale)
    if not np.all((scaled >= 0) & (scaled <= 255)):
        return None
    pixels = scaled.astype(np.uint8)
    back = pixels.astype(np.float32) / np.float32(scale)
    return pixels if np.array_equal(back.view(np.uint32), x.view(np.uint32)) else None


def encode_segment(x: np.ndarray, labels: np.ndarray, scale: float | None) -> tuple[bytes, str]:
    """(npz bytes, encoding) of one task's evaluation samples; see the module docstring."""
    pixels = as_pixels(x, scale) if scale is not None else None
    if pixels is not None:
        assert scale is not None
        arrays = {"pixels": pixels, "pixel_scale": np.array(scale, dtype=np.float64), "label": labels.astype(str)}
        return arrays_to_bytes(arrays), "uint8"
    return arrays_to_bytes({"x": x.astype(np.float32, copy=False), "label": labels.astype(str)}), "float32"


def decode_segment(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(x float32, labels) of a segment, x bit for bit as it was decoded."""
    arrays = bytes_to_arrays(data)
    if "pixels" in arrays:
        scale = np.float32(float(arrays["pixel_scale"]))
        return arrays["pixels"].astype(np.float32) / scale, arrays["label"]
    return arrays["x"], arrays["label"]


def eval_refs(references: dict[str, Ref]) -> list[Ref]:
    """A manifest's evaluation segments, in order."""
    refs = [dict(r) for r in references.values() if r.get("kind") == KIND]
    return sorted(refs, key=lambda r: int(r["index"]))


def read_suite(folder: Path, references: dict[str, Ref], content: Callable[[str], Path]) -> tuple[Suite, list[Ref]]:
    """(the version's regression suite, its segments' references: [] for the old layout) from its folder or from
    the content its manifest references (``content``: the store's ``content_path``), each checked by sha256."""
    refs = eval_refs(references)
    if not refs:
        return bytes_to_arrays((folder / EVAL_FILE).read_bytes()), []
    xs, labels, tasks = [], [], []
    for ref in refs:
        data = content(str(ref["sha256"])).read_bytes()
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise ValueError(f"evaluation samples {ref['sha256']} of task {ref['task']!r} do not match their sha256")
        x, y = decode_segment(data)
        xs.append(x)
        labels.append(y.astype(str))
        tasks.append(np.array([ref["task"]] * len(x), dtype=str))
    # as merge_suite concatenated them: numpy widens the string dtypes to the longest
    return {"x": np.concatenate(xs), "label": np.concatenate(labels), "task": np.concatenate(tasks)}, refs


def runs(suite: Suite) -> list[tuple[str, int, int]]:
    """(task, start, stop) of each run of one task in an old-layout suite, in order."""
    tasks = suite["task"].astype(str)
    if len(tasks) == 0:
        return []
    starts = [0, *(np.flatnonzero(tasks[1:] != tasks[:-1]) + 1).tolist()]
    stops = [*starts[1:], len(tasks)]
    return [(str(tasks[a]), a, b) for a, b in zip(starts, stops, strict=True)]


def segment_ref(put: Callable[[bytes], str], index: int, task: str, x: np.ndarray, labels: np.ndarray,
                scale: float | None) -> Ref:  # fmt: skip
    """Store one segment as content (once: the same bytes are the same content) and return its reference."""
    data, encoding = encode_segment(x, labels, scale)
    return {"sha256": put(data), "size": len(data), "kind": KIND, "index": index, "task": task, "samples": len(x),
            "encoding": encoding}  # fmt: skip


def suite_references(
    put: Callable[[bytes], str], parent_refs: list[Ref], parent_suite: Suite, new_eval: Suite, task: str,
    scale: float | None,
) -> dict[str, Ref]:  # fmt: skip
    """The references of a new version's suite: the parent's segments as they are (or, for a parent of the old
    layout, its ``eval.npz`` split into segments and stored once now), then this job's samples as one more."""
    refs = list(parent_refs)
    if not refs and len(parent_suite.get("x", ())):
        refs = [segment_ref(put, i, t, parent_suite["x"][a:b], parent_suite["label"][a:b], scale)
                for i, (t, a, b) in enumerate(runs(parent_suite))]  # fmt: skip
    refs.append(segment_ref(put, len(refs), task, new_eval["x"], new_eval["label"], scale))
    return {f"{PREFIX}{int(r['index']):04d}": r for r in refs}


# The gate's share of a large suite (``scored_rows``): every class keeps at least CLASS_MIN of its samples whatever
# the budget, and every task at least TASK_MIN of its own (all of them when it has no more) while the budget allows
# it (TASK_MIN x tasks within the budget; past that, budget / tasks each).
CLASS_MIN = 2
TASK_MIN = 200


def scored_rows(tasks: np.ndarray, labels: np.ndarray, new_task: str, budget: int, seed: int) -> np.ndarray | None:
    """The rows of a regression suite the gate scores this job: None for the whole suite (it has at most ``budget``
    samples, the budget is 0, or no class has more than its share), else a sorted, seeded, stratified sample.

    Scoring a sample costs a pass over every class and the suite holds samples of every class, so the whole suite
    costs samples x classes per job: classes^2 as a classifier grows. Past ``budget`` samples each class (a task's
    label) keeps ``max(CLASS_MIN, budget // classes)`` of its samples, chosen at random (seeded by ``seed``: a
    job's verdict is reproducible), and more where its task needs them to keep its minimum (TASK_MIN, or
    ``budget // tasks`` when that is less); the new task keeps all of its own. Every old class is still
    re-checked, on fewer samples: the gate's intervals use the number scored. Up to ``budget / CLASS_MIN``
    classes the scored samples stay within about twice the budget plus the new task's own, so a pass costs
    O(budget x classes): linear in the classes learnt."""
    n = len(labels)
    if budget <= 0 or n <= budget:
        return None
    task_names, task_code = np.unique(np.asarray(tasks).astype(str), return_inverse=True)
    label_names, label_code = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    # a stratum is a (task, label) pair; each stratum's task, and how many strata each task has
    strata, inverse, counts = np.unique(task_code * len(label_names) + label_code, return_inverse=True,
                                        return_counts=True)  # fmt: skip
    stratum_task = strata // len(label_names)
    classes_in_task = np.bincount(stratum_task, minlength=len(task_names))
    # a task's minimum shares the budget too where there are many tasks (a stream of one-class tasks would
    # otherwise keep TASK_MIN of every class)
    task_min = min(TASK_MIN, max(CLASS_MIN, budget // len(task_names)))
    quota = np.maximum(max(CLASS_MIN, budget // len(strata)), -(-task_min // classes_in_task[stratum_task]))
    quota[task_names[stratum_task] == new_task] = n  # the new task: judged on every sample
    if np.all(counts <= quota):
        return None
    order = np.lexsort((np.random.default_rng(seed).random(n), inverse))  # by stratum, random within
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - starts[inverse[order]]
    return np.sort(order[rank < quota[inverse[order]]])
