"""Checkpoint bundles: one immutable folder per version.

    manifest.json        network spec, head sizes, unit labels, tasks, preprocessing, strategy + params,
                         parent, versions of the libraries that wrote it
    model.safetensors    the classifier's weights; for a frozen pretrained backbone whose spec records
                         its weights' sha256, all but the backbone's (``external_backbone``): those are
                         loaded from the spec's source and checked against the sha256, not copied into
                         every version
    state.pt             every strategy's state (tensors, lists, numbers, strings), keyed by strategy
                         name; loads with torch.load(weights_only=True), no pickled objects. Written with
                         ``put_content``, its large tensors are content stored once by sha256 and state.pt
                         holds placeholders naming their references (``model_core.state_content``)
    <extra files>        e.g. head.onnx (or, before shared backbones, model.onnx), written in the same atomic step

The manifest also lists ``files`` (the sha256 of every file of the bundle but itself) and ``references``:
content the version needs that is not in its folder but stored once for every version that shares it,
named by sha256 (``{"backbone": {"sha256", "size", "kind", ...}}``: the frozen backbone's graph, see
``model_core.export_frozen``; ``state/...``: large strategy state tensors; the service adds its own, e.g. each
task's evaluation samples). Where that content lives is the artifact store's business (``service.storage``);
a reader fetches it by sha256 and checks it. Bundles written before either field have neither, and load as
before.

A bundle is written into a temporary sibling folder, each file fsynced, then renamed into place, so a
reader sees either nothing or the whole bundle; an existing bundle is never overwritten.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model_core import __version__
from model_core.config import NetworkSpec
from model_core.files import sha256_file
from model_core.learner import Learner, TaskInfo
from model_core.networks.classifier import create_network
from model_core.state_content import Put, has_placeholders, join_state, split_state

FORMAT = "engram-bundle/1"
MANIFEST, WEIGHTS, STATE = "manifest.json", "model.safetensors", "state.pt"
EXTERNAL_PREFIX = "backbone.net."  # the registry network's tensors; its mean/std buffers stay in the bundle


@dataclass(frozen=True)
class Manifest:
    network: dict[str, Any]
    head_sizes: list[int]
    labels: list[str]
    tasks: list[dict[str, Any]]
    strategy: dict[str, Any]  # {"name": ..., "params": {...}} of the job that produced this bundle
    parent: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # free-form: metrics, job ids, ...
    # Set when model.safetensors leaves out the frozen backbone: {"name", "weights", "sha256"} of its source.
    external_backbone: dict[str, Any] | None = None
    # Content stored once outside the bundle and needed to serve it, by role: {"sha256", "size", "kind", ...}.
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256, every file but the manifest
    format: str = FORMAT
    created_at: float = field(default_factory=time.time)
    versions: dict[str, str] = field(default_factory=lambda: {"engram": __version__, "torch": torch.__version__})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_bundle(
    path: str | Path,
    learner: Learner,
    strategy: Mapping[str, Any] | None = None,
    parent: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    references: Mapping[str, Mapping[str, Any]] | None = None,
    put_content: Put | None = None,
) -> Manifest:
    """Write ``learner`` as a new bundle at ``path`` atomically; refuses to overwrite. ``references``: content
    stored elsewhere by sha256 that the version needs (the manifest's ``references``). ``put_content`` (the
    artifact store's): large strategy state tensors go to content through it, referenced as ``state/...``;
    None: every tensor in state.pt."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"bundle {path} already exists; bundles are immutable")
    bb = learner.spec.backbone
    # A frozen backbone with recorded weights is the same tensors in every version: keep a reference.
    external = not bb.builtin and bb.pretrained and bool(bb.sha256) and learner.model.frozen_backbone
    manifest = Manifest(
        network=learner.spec.to_dict(),
        head_sizes=learner.model.head_sizes,
        labels=list(learner.labels),
        tasks=[{"name": t.name, "units": list(t.units)} for t in learner.tasks],
        strategy=dict(strategy or {}),
        parent=parent,
        metadata=dict(metadata or {}),
        external_backbone={"name": bb.name, "weights": bb.weights, "sha256": bb.sha256} if external else None,
        references={k: dict(v) for k, v in (references or {}).items()},
    )
    states: dict[str, Any] = dict(learner.strategy_states)
    if put_content is not None:  # stored before the bundle that references them is renamed into place
        states, state_refs = split_state(states, put_content)
        clash = set(state_refs) & set(manifest.references)
        if clash:
            raise ValueError(f"references {sorted(clash)} are given and also made from the strategy state")
        manifest.references.update(state_refs)
    for role, ref in manifest.references.items():
        if not isinstance(ref.get("sha256"), str) or len(ref["sha256"]) != 64:
            raise ValueError(f"reference {role!r} has no sha256")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in learner.model.state_dict().items()
                   if not (external and k.startswith(EXTERNAL_PREFIX))}  # fmt: skip
        save_file(weights, str(tmp / WEIGHTS))
        with open(tmp / WEIGHTS, "rb+") as f:
            os.fsync(f.fileno())
        with open(tmp / STATE, "wb") as f:
            torch.save(states, f)
            f.flush()
            os.fsync(f.fileno())
        for name, data in (extra_files or {}).items():
            if "/" in name or name.startswith(".") or name in (MANIFEST, WEIGHTS, STATE):
                raise ValueError(f"bad extra file name {name!r}")
            _write_bytes(tmp / name, data)
        manifest.files.update({p.name: sha256_file(p) for p in sorted(tmp.iterdir())})
        _write_bytes(tmp / MANIFEST, json.dumps(manifest.__dict__, indent=2, sort_keys=True).encode())
        _fsync_dir(tmp)
        os.rename(tmp, path)  # atomic on one filesystem; fails if path appeared meanwhile
        _fsync_dir(path.parent)
    except BaseException:
        for child in tmp.iterdir() if tmp.exists() else []:
            child.unlink()
        if tmp.exists():
            tmp.rmdir()
        raise
    return manifest


def read_manifest(path: str | Path) -> Manifest:
    data = json.loads((Path(path) / MANIFEST).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} bundle (format {data.get('format')!r})")
    return Manifest(**data)


def content_near(path: Path) -> Callable[[str], Path]:
    """Content by sha256 in the ``content/sha256`` folder of the store holding the bundle at ``path`` (a
    filesystem store's layout, ``<root>/classifiers/<name>/<bundle>``, or an S3 store's local cache)."""

    def find(sha256: str) -> Path:
        for parent in path.resolve().parents:
            candidate = parent / "content" / "sha256" / sha256
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"bundle {path} references content {sha256}, which is not in a content/sha256 "
                                "folder above it; load it with the artifact store's content_path")  # fmt: skip

    return find


def load_bundle(path: str | Path, content: Callable[[str], Path] | None = None) -> tuple[Learner, Manifest]:
    """Rebuild the learner saved at ``path`` (weights and every strategy state) on the cpu. ``content``: a local
    file of referenced content by sha256 (the artifact store's ``content_path``); by default the content folder
    of the store the bundle is in."""
    path = Path(path)
    manifest = read_manifest(path)
    spec = NetworkSpec.from_dict(manifest.network)
    if manifest.external_backbone is None:
        model = create_network(spec, manifest.head_sizes, load_weights=False)  # the bundle holds every weight
        weights = load_file(str(path / WEIGHTS))
        model.restore_heads(weights)  # class-model head blocks where the bundle has them
        model.load_state_dict(weights)
    else:  # the frozen backbone from its source, which must still have the recorded sha256
        model = create_network(spec, manifest.head_sizes)
        weights = load_file(str(path / WEIGHTS))
        model.restore_heads(weights)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or not all(k.startswith(EXTERNAL_PREFIX) for k in missing):
            raise ValueError(f"bundle {path}: weights do not fit the network ({(unexpected or missing)[0]!r})")
    model.eval()
    states = torch.load(path / STATE, weights_only=True, map_location="cpu")
    if has_placeholders(states):
        where = content or content_near(path)
        states = join_state(states, manifest.references, lambda sha: where(sha).read_bytes())
    tasks = [TaskInfo(t["name"], list(t["units"])) for t in manifest.tasks]
    return Learner(spec, model, list(manifest.labels), tasks, dict(states)), manifest
