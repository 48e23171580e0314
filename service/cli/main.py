"""The ``engram`` command: the server's commands (serve, worker, migrate, export, import, backup, restore,
benchmark; the ``server`` extra) and, from ``service.cli.commands``, the client's (learn, predict, jobs, versions...; the base install).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from service.settings import Settings

log = logging.getLogger("engram")


def _strategies(_: argparse.Namespace) -> int:
    from model_core.strategy_specs import SPECS

    for name, spec in sorted(SPECS.items()):
        notes = []
        if spec.stores_data:
            notes.append("keeps training samples")
        if not spec.adds_classes:
            notes.append("cannot add classes to one head (class-incremental)")
        if spec.needs_tasks:
            notes.append("task-incremental classifiers only")
        print(
            f"{name}: {spec.summary}; parameters {json.dumps(spec.defaults)}"
            + (f"  [{'; '.join(notes)}]" if notes else "")
        )
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "insecure", False):
        overrides["insecure"] = True
    return Settings(**overrides)  # type: ignore[arg-type]


def _child_env(settings: Settings) -> dict[str, str]:
    """The worker process reads the same settings from its environment."""
    env = dict(os.environ)
    env["ENGRAM_DATA_DIR"] = str(settings.data_dir.resolve())
    env["ENGRAM_DATABASE_URL"] = settings.db_url
    env["ENGRAM_ARTIFACTS_DIR"] = str(settings.artifacts_path)
    env["ENGRAM_DEVICE"] = settings.device
    env["ENGRAM_PARENT_PID"] = str(os.getpid())  # the worker exits when this process dies
    return env


class WorkerSupervisor:
    """Runs ``engram worker`` as a child process (a fresh interpreter: never forked from a process that
    touched CUDA) and starts it again if it dies, until stopped."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._spawn()
        self.thread.start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "service.jobs.worker"], env=self.env)
        log.info("started worker process %d", self.proc.pid)

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            if self.proc is not None and self.proc.poll() is not None:
                log.warning("worker process %d exited with %s; starting a new one", self.proc.pid, self.proc.returncode)
                self._spawn()

    def stop(self) -> None:
        self.stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.http.app import create_app
    from service.persistence.migrations import upgrade

    settings = _settings(args)
    if not settings.keys() and not settings.insecure:
        print("engram: no API keys configured. Set ENGRAM_API_KEYS='admin:KEY,learn:KEY,predict:KEY' "
              "or pass --insecure to run without authentication.", file=sys.stderr)  # fmt: skip
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    supervisor = WorkerSupervisor(_child_env(settings)) if settings.embedded_worker and not args.no_worker else None

    def on_term(signum: int, _: object) -> None:
        # uvicorn shuts down gracefully, restores this handler and re-raises the signal into it, so the
        # worker is stopped here rather than in a `finally` that the re-raised signal would skip.
        if supervisor is not None:
            supervisor.stop()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    if supervisor is not None:
        supervisor.start()
    try:
        # access_log off: RequestLogMiddleware writes one JSON line per request (with its id) instead
        if args.workers > 1:
            from service.http.processes import serve_processes

            serve_processes(settings, args.host, args.port, args.workers)
        else:
            uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False)
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from service.jobs.worker import serve_jobs
    from service.persistence.migrations import upgrade

    settings = _settings(args)
    upgrade(settings.db_url)
    serve_jobs(settings)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from service.persistence.migrations import upgrade

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    print(f"database at {settings.db_url.split('@')[-1]} is at the newest schema")
    return 0


SERVER_COMMANDS = ("serve", "worker", "migrate", "export", "import", "backup", "restore", "benchmark")
API_MODULES = ("litestar", "sqlalchemy", "onnxruntime")  # the `serve` extra: the API, no torch
TRAINING_MODULES = ("torch", "sqlalchemy", "onnxruntime")  # the `worker` extra adds the training engine
# What each server command needs, and the extra that installs it. `serve` starts a local worker unless
# --no-worker is given (or ENGRAM_EMBEDDED_WORKER=false), so it needs the training modules too then.
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "serve": (API_MODULES, "serve"),
    "migrate": (API_MODULES, "serve"),
    "worker": (TRAINING_MODULES, "worker"),
    "export": (API_MODULES, "serve"),  # an archive; a bundle's ONNX export needs torch (service.cli.archive)
    "import": (API_MODULES, "serve"),
    "backup": (API_MODULES, "serve"),
    "restore": (API_MODULES, "serve"),
    "benchmark": (TRAINING_MODULES, "worker"),
}


def missing_for(argv: list[str]) -> str | None:
    """Why this install cannot run the server command ``argv`` (naming the extra to install), or None."""
    command = argv[0] if argv else None
    if command not in NEEDS or "-h" in argv or "--help" in argv:  # a command's help needs none of it
        return None
    modules, extra = NEEDS[command]
    missing = [m for m in modules if not _installed(m)]
    if missing:
        return (f"engram {command} needs {', '.join(missing)}, which this install lacks: "
                f"pip install 'engram[{extra}]', or pip install 'engram[server]' for everything")  # fmt: skip
    if command == "serve" and "--no-worker" not in argv and Settings().embedded_worker and not _installed("torch"):
        return ("engram serve starts a local training worker, which needs torch, and this install has none "
                "(the `serve` extra is the API alone): pass --no-worker and run `engram worker` where "
                "'engram[worker]' is installed, or pip install 'engram[server]'")  # fmt: skip
    return None


def _configure_logging(verbose: bool) -> None:
    """INFO log lines for the server's commands (``serve``, ``worker``...) and behind ``--verbose``; a client
    command otherwise prints its own messages only (warnings and errors still show)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    if command in SERVER_COMMANDS:
        _configure_logging(verbose=True)
    refusal = missing_for(argv)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    if command == "benchmark":  # the rest is the benchmark's own (argparse's REMAINDER refuses a leading --flag)
        from service.cli.benchmark import main as bench_main

        return bench_main(argv[1:], prog="engram benchmark")
    args = build_parser().parse_args(argv)
    if command not in SERVER_COMMANDS:
        _configure_logging(verbose=getattr(args, "verbose", False))
    return int(args.func(args))


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram", description="Engram: an incremental-classifier service.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the API with a local worker (SQLite and artifacts in --data-dir)")
    serve.add_argument("--data-dir", help="where the database and artifacts live (default ./engram-data)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--insecure", action="store_true", help="allow running with no API keys")
    serve.add_argument("--no-worker", action="store_true", help="do not start a local worker process")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="serving processes, each with its own ONNX Runtime sessions (default 1)")  # fmt: skip
    serve.set_defaults(func=_serve)
    worker = sub.add_parser("worker", help="run a training worker in the foreground")
    worker.add_argument("--data-dir")
    worker.set_defaults(func=_worker)
    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument("--data-dir")
    migrate.set_defaults(func=_migrate)
    sub.add_parser("strategies", help="list the learning strategies and their parameters").set_defaults(
        func=_strategies
    )
    from service.cli.archive import register as register_archive

    register_archive(sub, _settings)  # export, import, backup, restore
    bench = sub.add_parser("benchmark", help="run the continual-learning benchmark (python -m benchmarks.continual)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=lambda a: 2)  # main() hands "benchmark ..." to service.cli.benchmark before parsing
    from service.cli.commands import register

    register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
