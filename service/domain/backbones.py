"""Pretrained backbones at classifier creation: their weights are checked before the classifier exists.

Packaged weights (``model_core.packaged_weights``) are recorded from their published sha256, in process.
Any other check builds the network and loads its weights, which needs torch; the API process never imports
torch, so that check runs in a child interpreter (``python -m model_core.backbone_check serve``). The child
is started on the first check and kept for the next ones (importing torch and timm takes seconds); it
exits by itself after ``IDLE_EXIT_S`` without a request, or when this process ends.
"""

from __future__ import annotations

import importlib.util
import json
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from model_core.config import BUILTIN_BACKBONES, NetworkSpec
from model_core.packaged_weights import record_packaged
from service.domain.errors import Invalid

CHECK_TIMEOUT_S = 300.0  # importing torch and timm on a busy host, building, hashing, one forward pass
IDLE_EXIT_S = 300.0  # the child's memory (torch, timm) is given back after this long without a check
ANSWER = "engram-backbone-check: "  # model_core.backbone_check.ANSWER (not imported: it would be the only link)


def _can_check() -> bool:
    """Whether this install has torch for the checking child (located, never imported here)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:
        return False


class BackboneCheckFailed(RuntimeError):
    """The check itself broke (not the user's spec): the child crashed or timed out (a 500)."""


class BackboneChecker:
    """One reusable child that checks backbone specs; one check at a time."""

    def __init__(self, idle_exit_s: float = IDLE_EXIT_S, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.idle_exit_s, self.timeout_s = idle_exit_s, timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def _child(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            cmd = [sys.executable, "-m", "model_core.backbone_check", "serve", "--idle-exit", str(self.idle_exit_s)]
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        return self._proc

    def _ask(self, proc: subprocess.Popen[str], line: str) -> str | None:
        """The child's answer line, or None when it had exited (e.g. idle) before reading the request."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        deadline = time.monotonic() + self.timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    continue
                out = proc.stdout.readline()
                if not out:
                    return None
                if out.startswith(ANSWER):
                    return out[len(ANSWER) :]
        proc.kill()
        proc.wait()
        raise BackboneCheckFailed(f"checking the backbone took over {self.timeout_s:.0f} s")

    def check(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for _ in range(2):  # a second try in a fresh child if the kept one had exited
                proc = self._child()
                answer = self._ask(proc, json.dumps(request))
                if answer is not None:
                    result: dict[str, Any] = json.loads(answer)
                    return result
                proc.wait()
                if proc.returncode not in (0, None):
                    raise BackboneCheckFailed(f"the backbone check process died (exit code {proc.returncode})")
        raise BackboneCheckFailed("the backbone check process exited before answering")

    def resolve_network(
        self, network: dict[str, Any], cache_dir: Path, allow_download: bool, files_dir: Path | None = None
    ) -> dict[str, Any]:
        """``network`` (a NetworkSpec dict) with its backbone's weights checked and their sha256 recorded.

        A built-in backbone (no weights) is returned as it is, without a child. A spec whose backbone
        cannot be built or whose weights are missing or do not fit raises ``Invalid`` naming the problem.
        """
        backbone = network.get("backbone")
        if not isinstance(backbone, dict) or backbone.get("name") in BUILTIN_BACKBONES:
            return network
        packaged = record_packaged(NetworkSpec.from_dict(network))  # installed and as published: no child
        if packaged is not None:
            return packaged.to_dict()
        if not _can_check():
            raise Invalid(
                f"backbone: {backbone.get('name')!r} with weights {backbone.get('weights')!r} is checked by building "
                "it, which needs torch, and this API was installed without it (the `serve` extra); use a packaged "
                "backbone (timm/efficientnet_lite0 with weights 'package') or install 'engram[server]' on the API"
            )
        answer = self.check({"network": network, "cache_dir": str(cache_dir), "allow_download": allow_download,
                             "files_dir": None if files_dir is None else str(files_dir)})  # fmt: skip
        if "error" in answer:
            raise Invalid(f"backbone: {answer['error']}")
        resolved: dict[str, Any] = answer["network"]
        return resolved
