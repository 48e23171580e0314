"""A bounded cache of built sessions by version, counted in bytes.

Holds the versions a replica serves besides the active ones (pinned predictions, quick rollbacks): least
recently used first out, while the bytes held exceed the budget. Counting bytes rather than entries lets a
replica keep hundreds of small versions (an 8x8 digits MLP is a few hundred kB) and only a few photo ones
(a frozen EfficientNet session at 224 px holds about 0.8 GB), so clients cycling over more pinned versions than a
fixed count would hold do not rebuild a session per request. The newest entry is always kept, whatever its
size. Thread-safe.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SessionCache(Generic[K, V]):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._sizes: dict[K, int] = {}  # the last size recorded for each key (a swap re-adds without one)
        self.bytes = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: K, value: V, nbytes: int | None = None) -> None:
        """Add or refresh ``key``; ``nbytes`` None keeps the size recorded for it before (0 if none)."""
        with self._lock:
            size = self._sizes.get(key, 0) if nbytes is None else max(0, nbytes)
            self._sizes[key] = size
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def folder_bytes(folder: Path) -> int:
    """Bytes of a version's ONNX graph and weights files (the least a session built from them holds)."""
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.name.endswith(".json"))
    except OSError:
        return 0
