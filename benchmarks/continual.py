"""The continual-learning benchmark: ``python -m benchmarks.continual [...]`` is ``engram benchmark [...]``.

It lives in the package (``service.cli.benchmark``, where its options and streams are documented) so that an
installed ``engram`` runs it too; this module keeps the command the README and the sweeps use.
"""

from __future__ import annotations

from service.cli.benchmark import PROTOCOLS, main

__all__ = ["PROTOCOLS", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
