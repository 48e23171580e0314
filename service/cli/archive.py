"""``engram export | import | backup | restore``: archives of a classifier or of the whole deployment, read from and
written to the database and the artifact store of this host's settings (``service.application.archive``)."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from pathlib import Path
from typing import Any

from service.settings import Settings

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a classifier's name (service.schemas.NAME)


def _open(settings: Settings) -> tuple[Any, Any, Any]:
    from service.persistence.models import make_engine, make_sessionmaker
    from service.storage import open_store

    engine = make_engine(settings.db_url)
    return engine, make_sessionmaker(engine), open_store(settings.artifacts_path, settings.artifacts_url)


def _actor(command: str) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{command}:{user}"[:64]


def _refused(command: str, exc: Exception) -> int:
    print(f"engram {command}: refused: {exc}", file=sys.stderr)
    return 2


def export(args: argparse.Namespace, settings: Settings) -> int:
    """``engram export NAME FILE`` (an archive), or, for a bundle folder, its ONNX graph (``engram export BUNDLE
    OUT.onnx``, as before)."""
    from service.application.archive import ArchiveError, export_archive
    from service.domain.errors import NotFound

    engine, sessions, store = _open(settings)
    try:
        summary = export_archive(sessions, store, Path(args.file), [args.name] if args.name else None)
    except (ArchiveError, NotFound, Exception) as exc:  # e.g. the store lost a file: no archive is left behind
        return _refused("export" if args.name else "backup", exc)
    finally:
        engine.dispose()
    print(f"wrote {summary['file']} ({summary['bytes']:,} bytes): {', '.join(summary['classifiers']) or 'no classifiers'}"
          f"; {summary['versions']} version bundle(s), {summary['content']} piece(s) of content")  # fmt: skip
    return 0


def restore(args: argparse.Namespace, settings: Settings, action: str) -> int:
    """``engram import FILE [--as NAME]`` / ``engram restore FILE``."""
    from service.application.archive import ArchiveError, import_archive
    from service.domain.errors import Conflict
    from service.persistence.migrations import upgrade

    rename = getattr(args, "as_name", None)
    if rename is not None and not NAME.fullmatch(rename):
        return _refused(action, ValueError(f"--as {rename!r} is not a classifier name"))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    engine, sessions, store = _open(settings)
    try:
        summary = import_archive(sessions, store, Path(args.file), _actor(action), action, rename)
    except (ArchiveError, Conflict, OSError) as exc:
        return _refused(action, exc)
    finally:
        engine.dispose()
    print(f"{action}: restored {', '.join(summary['classifiers']) or 'no classifiers'} ({summary['versions']} version "
          f"bundle(s), {summary['content']} piece(s) of content); running servers serve them at their next sync")  # fmt: skip
    return 0


def register(sub: Any, settings_of: Any) -> None:
    """Add the archive commands to the ``engram`` parser; ``settings_of(args)``: the settings (``--data-dir``)."""
    exp = sub.add_parser("export", help="write a classifier to an archive FILE (kept versions, their content, audit, "
                         "settings); for a bundle folder: its ONNX graph")  # fmt: skip
    exp.add_argument("name", metavar="NAME", help="the classifier (or a bundle folder: ONNX export)")
    exp.add_argument("file", metavar="FILE")
    exp.add_argument("--data-dir")
    exp.set_defaults(func=lambda a: _export_or_onnx(a, settings_of(a)))
    imp = sub.add_parser("import", help="restore a classifier from an archive FILE, checked against its sha256s")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--as", dest="as_name", metavar="NAME", help="under another name")
    imp.add_argument("--data-dir")
    imp.set_defaults(func=lambda a: restore(a, settings_of(a), "import"))
    bak = sub.add_parser("backup", help="write every classifier to one archive FILE (a consistent snapshot)")
    bak.add_argument("file", metavar="FILE")
    bak.add_argument("--data-dir")
    bak.set_defaults(func=lambda a: export(argparse.Namespace(**{**vars(a), "name": None}), settings_of(a)))
    res = sub.add_parser("restore", help="restore every classifier of a backup FILE (none of them may exist here)")
    res.add_argument("file", metavar="FILE")
    res.add_argument("--data-dir")
    res.set_defaults(func=lambda a: restore(a, settings_of(a), "restore"))


def _export_or_onnx(args: argparse.Namespace, settings: Settings) -> int:
    if (Path(args.name) / "manifest.json").is_file():
        return _onnx(Path(args.name), Path(args.file))
    return export(args, settings)


def _onnx(bundle: Path, output: Path) -> int:
    try:
        from model_core.checkpoint import load_bundle
        from model_core.export import export_onnx
    except ImportError as exc:
        print(f"engram export of a bundle to ONNX needs torch ({exc}): pip install 'engram[worker]'", file=sys.stderr)
        return 2
    learner, _ = load_bundle(bundle)
    result = export_onnx(learner)
    output.write_bytes(result.onnx)
    print(f"wrote {output} ({len(result.onnx)} bytes); max |onnx - torch| = {result.max_abs_diff:.2e}")
    return 0
