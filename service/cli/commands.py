"""``engram`` commands that talk to a running server through the typed client."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.client import MESSAGE_SUFFIXES, EngramClient, EngramError, Job, read_messages

console = Console()
EXIT = {"promoted": 0, "passed": 0, "rejected": 3}  # learn's exit code by how the job ended; otherwise 1


def _client(args: argparse.Namespace) -> EngramClient:
    return EngramClient(args.url, args.key)


def _image_input(text: str) -> dict[str, Any]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("--image takes CxHxW, e.g. 1x28x28 or 3x64x64") from None
    return {"kind": "image", "channels": c, "height": h, "width": w}


def _backbone(args: argparse.Namespace) -> str | dict[str, Any] | None:
    """The name alone, or the object form when a weights source, trainable part or resolution is given."""
    extra = {"weights": args.weights, "file": args.weights_file, "train": args.train, "resolution": args.resolution}
    if args.weights_file and not args.weights:
        extra["weights"] = "file"
    extra = {k: v for k, v in extra.items() if v is not None}
    if not extra:
        return args.backbone  # type: ignore[no-any-return]
    if not args.backbone:
        raise SystemExit("--weights, --weights-file, --train and --resolution need --backbone")
    return {"name": args.backbone, **extra}


def _create(args: argparse.Namespace) -> int:
    inp = args.image if args.image else {"kind": "vector", "dim": args.vector} if args.vector else {"kind": "text"}
    if args.max_tokens is not None:
        if not args.text:
            raise SystemExit("--max-tokens is for --text classifiers")
        inp["max_tokens"] = args.max_tokens
    gate = {"manual_approval": True} if args.manual_approval else None
    with _client(args) as c:
        unknowns: dict[str, Any] = {"capture": True} if args.capture_unknowns else {}
        if args.known_rate is not None:
            unknowns["known_rate"] = args.known_rate
        clf = c.create_classifier(args.name, inp, args.scenario, _backbone(args), gate, unknowns or None)
    console.print(f"created [bold]{clf.name}[/] ({clf.scenario}, {clf.backbone} backbone)")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.classifiers()
    table = Table("name", "input", "scenario", "backbone", "active version")
    for clf in rows:
        table.add_row(clf.name, json.dumps(clf.input.model_dump()), clf.scenario, clf.backbone, str(clf.active_version))
    console.print(table)
    return 0


def print_verdict(job: Job) -> None:
    colour = {"promoted": "green", "passed": "green", "rejected": "red"}.get(job.status, "yellow")
    console.print(
        f"job {job.job_id}: [bold {colour}]{job.status}[/]" + (f", version {job.version}" if job.version else "")
    )
    if job.error:
        console.print(f"  error: {job.error}")
    report = job.report or {}
    for row in report.get("tasks", []):
        before = "new" if row.get("before") is None else f"{row['before']:.3f}"
        mark = "ok" if row["passed"] else "FAIL"
        split = ""
        if row.get("cause"):  # fell beyond tolerance: forgetting, or new classes taking its samples
            split = (f"; {row['cause']}: forgetting {row['forgetting']:.3f}, taken by new classes "
                     f"{row['lost_to_new']:.3f}, {row.get('allowed', row['reverse']):.3f} of it allowed by the reverse "
                     "confusion") if "forgetting" in row else ""
        console.print(f"  {mark:4} task {escape(str(row['task']))}: {before} -> {row['after']:.3f} (n={row['n']}{split})")
    training = report.get("training")
    if training:
        console.print(f"  training: {training['steps']} steps of a budget of {training['budget']}, "
                      f"stopped: {training['stopped']}")  # fmt: skip
    for failure in report.get("failures", []):
        console.print(f"  [red]{failure}[/]")
    if report.get("explanation"):
        console.print(f"  [bold]why:[/] {report['explanation']}")
    if report.get("held"):  # passed, but not auto-promoted: the active version moved while it trained
        console.print(f"  [yellow]not promoted:[/] {report['held']}")
    print_forgotten(report)


def print_forgotten(report: dict[str, Any], shown: int = 10) -> None:
    """The forgotten classes (before -> after, who lost each) and the gate's next step."""
    rows = [r for r in report.get("classes", []) if r.get("forgotten")]
    if rows:
        console.print(f"  [bold]forgotten classes:[/] {escape(', '.join(report.get('forgotten', [])))}")
    for r in rows[:shown]:
        replayed = r.get("replay_accuracy")
        who = f"; lost by the {r['lost_by']}" if r.get("lost_by") else ""
        figure = f"; replayed samples recognised {replayed:.3f}" if replayed is not None else ""
        console.print(f"    {escape(str(r['class']))} (task {escape(str(r['task']))}): "
                      f"{r['before']:.3f} -> {r['after']:.3f} (n={r['n']}{who}{figure})")  # fmt: skip
    if len(rows) > shown:
        console.print(f"    ... and {len(rows) - shown} more")
    pairs = report.get("confused_pairs") or []
    if pairs:
        console.print("  [bold]confused pairs[/] (old taken for new; the reverse):")
    for p in pairs[:shown]:
        console.print(f"    {escape(str(p['old']))} -> {escape(str(p['new']))}: {p['old_as_new']:.3f}; "
                      f"{escape(str(p['new']))} -> {escape(str(p['old']))}: {p['new_as_old']:.3f}")  # fmt: skip
    if report.get("confusion_note"):
        console.print(f"  [bold]confusion:[/] {escape(report['confusion_note'])}")
    if report.get("next_step"):
        console.print(f"  [bold]next step:[/] {escape(report['next_step'])}")


def _learn(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.iterations:
        extra["options"] = {"iterations": args.iterations}
    with _client(args) as c:
        if args.folder.lower().endswith(MESSAGE_SUFFIXES):  # messages of a text classifier
            job = c.learn_messages(args.name, args.folder, args.task, args.strategy, args.retention, **extra)
        else:
            job = c.learn_folder(args.name, args.folder, args.task, args.strategy, args.retention, **extra)
        console.print(f"queued job {job.job_id}")
        columns = [TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[losses]}"), TimeElapsedColumn()]  # fmt: skip
        with Progress(*columns, console=console, transient=False) as bar:
            bars: dict[str, Any] = {}

            def show(j: Job) -> None:
                p = j.progress or {}
                stage = p.get("stage")
                if not stage:
                    return
                if stage not in bars:
                    bars[stage] = bar.add_task(stage, total=p.get("total") or 1, losses="")
                losses = " ".join(f"{k}={v:.4g}" for k, v in (p.get("losses") or {}).items())
                bar.update(bars[stage], completed=p.get("step", 0), total=p.get("total") or 1, losses=losses)

            job = c.wait(job.job_id, on_progress=show, poll=0.3)
    print_verdict(job)
    return EXIT.get(job.status, 1)


def _predict(args: argparse.Namespace) -> int:
    if args.text is not None or args.text_file is not None:
        return _predict_texts(args)
    if not args.files:
        raise SystemExit("give image files, --text MESSAGE or --text-file FILE")
    with _client(args) as c:
        result = c.predict_files(args.name, args.files, top_k=args.top_k, task=args.task, version=args.version)
    for path, p in zip(args.files, result.predictions, strict=True):
        others = ", ".join(f"{r.label} {r.score:.3f}" for r in p.top_k[1:])
        console.print(f"{path}: [bold]{p.label}[/] {p.score:.3f}" + (f"  ({others})" if others else ""))
    console.print(f"(version {result.version})")
    return 0


def _predict_texts(args: argparse.Namespace) -> int:
    """Messages: --text (repeatable), or --text-file (one message a line, or a .csv/.jsonl with a text column)."""
    texts = list(args.text or [])
    if args.text_file:
        path = str(args.text_file)
        if path.lower().endswith(MESSAGE_SUFFIXES):
            texts += [m["text"] for m in read_messages(path, labelled=False)]
        else:
            with open(path, encoding="utf-8") as f:
                texts += [line.rstrip("\n") for line in f if line.strip()]
    with _client(args) as c:
        result = c.predict_texts(args.name, texts, top_k=args.top_k, task=args.task, version=args.version)
    for text, p in zip(texts, result.predictions, strict=True):
        others = ", ".join(f"{r.label} {r.score:.3f}" for r in p.top_k[1:])
        flag = "" if p.known is not False else "  [unknown]"
        console.print(f"{escape(text[:60])}: [bold]{escape(p.label)}[/] {p.score:.3f}{flag}" + (f"  ({escape(others)})" if others else ""),
                      highlight=False)  # fmt: skip
    console.print(f"(version {result.version})")
    return 0


def _unknowns_export(args: argparse.Namespace) -> int:
    with _client(args) as c:
        out, n = c.export_unknowns(args.name, args.folder)
    console.print(f"wrote {n} input(s) flagged unknown to {out} (deleted on the server)")
    if n and out.suffix == ".csv":
        console.print(f"fill in the label column of {out}, then: engram learn {args.name} {out} --task <task>")
    elif n:
        console.print(f"sort them into {args.folder}/<class>/ folders (and delete {out}), then: "
                      f"engram learn {args.name} {args.folder} --task <task>")  # fmt: skip
    return 0


def _versions(args: argparse.Namespace) -> int:
    words = args.words
    if len(words) == 2 and words[0] == "prune":
        return _prune(args, words[1])
    if len(words) != 1:
        raise SystemExit("usage: engram versions NAME | engram versions prune NAME [--dry-run]")
    if args.dry_run:
        raise SystemExit("--dry-run goes with 'engram versions prune NAME'")
    with _client(args) as c:
        rows = c.versions(words[0])
    table = Table("version", "status", "parent", "strategy", "classes", "avg acc", "BWT")
    for v in rows:
        r = v.report
        table.add_row(str(v.version), v.status, str(v.parent), v.strategy, str(len(v.classes)),
                      f"{r.get('average_accuracy', 0):.3f}", "" if r.get("bwt") is None else f"{r['bwt']:+.3f}")  # fmt: skip
    console.print(table)
    return 0


def _prune(args: argparse.Namespace, name: str) -> int:
    with _client(args) as c:
        result = c.prune(name, dry_run=args.dry_run)
    verb = "would prune" if result.dry_run else "pruned"
    table = Table("version", "status", "kept?", "why / bytes")
    for k in result.kept:
        table.add_row(str(k.version), k.status, "kept", k.reason)
    for p in result.pruned:
        table.add_row(str(p.version), p.status, verb, f"{p.bytes:,} bytes")
    console.print(table)
    content = result.content
    if content.deferred:
        console.print(f"content not collected now: {escape(content.deferred)}")
    else:
        console.print(f"content no kept version references: {len(content.removed)} "
                      f"{'to remove' if result.dry_run else 'removed'}")  # fmt: skip
    console.print(f"{name}: {verb} {len(result.pruned)} version(s), {result.bytes_freed:,} bytes"
                  + (" (dry run: nothing changed)" if result.dry_run else ""))  # fmt: skip
    return 0


def _delete(args: argparse.Namespace) -> int:
    if args.yes != args.name:
        raise SystemExit(f"deleting {args.name!r} removes every version, job and captured input of it for good: "
                         f"confirm with --yes {args.name}")  # fmt: skip
    with _client(args) as c:
        r = c.delete_classifier(args.name)
    console.print(f"deleted {args.name}: {r.versions} version(s), {r.jobs} job(s), {r.bytes_freed:,} bytes freed")
    return 0


def _retention(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.default:
            r = c.reset_retention(args.name)
        elif args.keep_ancestors is not None or args.keep_days is not None:
            r = c.set_retention(args.name, args.keep_ancestors, args.keep_days)
        else:
            r = c.retention(args.name)
    console.print(f"{r.classifier}: keeps the active version, its {r.keep_ancestors} nearest ancestors and every "
                  f"version active or created in the last {r.keep_days:g} days "
                  f"({'its own policy' if r.own else 'the deployment default'})")  # fmt: skip
    return 0


def _storage(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.storage()
    table = Table("classifier", "kept versions", "version bytes", "content bytes", "total")
    for name, u in sorted(rows.items()):
        table.add_row(name, str(u.count), f"{u.versions:,}", f"{u.content:,}", f"{u.total:,}")
    console.print(table)
    return 0


def _promote(args: argparse.Namespace) -> int:
    with _client(args) as c:
        v = c.promote(args.name, args.version, args.force, args.reason)
    console.print(f"{args.name}: version {v.version} is {v.status}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    with _client(args) as c:
        v = c.rollback(args.name, args.to, args.reason)
    console.print(f"{args.name}: rolled back; version {v.version} is {v.status}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.audit(args.name)
    table = Table("action", "from", "to", "actor", "forced", "reason")
    for a in rows:
        table.add_row(a.action, str(a.from_version), str(a.to_version), a.actor, str(a.forced), a.reason or "")
    console.print(table)
    return 0


def run(func: Any, args: argparse.Namespace) -> int:
    try:
        return int(func(args))
    except EngramError as exc:
        console.print(f"[red]error[/] {exc}", highlight=False)
        return 2


def register(sub: Any) -> None:
    """Add the client commands to the ``engram`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=os.environ.get("ENGRAM_URL", "http://127.0.0.1:8000"), help="server (ENGRAM_URL)"
    )
    common.add_argument("--key", default=os.environ.get("ENGRAM_KEY"), help="API key (ENGRAM_KEY)")
    common.add_argument("--verbose", "-v", action="store_true", help="also print log lines (each HTTP request)")

    def add(name: str, func: Any, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help)
        p.set_defaults(func=lambda a, f=func: run(f, a))
        return p

    clfs = sub.add_parser("classifiers", help="create or list classifiers").add_subparsers(dest="action", required=True)
    p = add("create", _create, "create a classifier", clfs)
    p.add_argument("name")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--image", type=_image_input, metavar="CxHxW")
    kind.add_argument("--vector", type=int, metavar="DIM")
    kind.add_argument("--text", action="store_true", help="messages (default encoder all-MiniLM-L6-v2, frozen)")
    p.add_argument("--max-tokens", type=int, help="text: tokens a message may have (default 128; longer ones are refused)")
    p.add_argument("--scenario", default="class-incremental", choices=["class-incremental", "task-incremental"])
    p.add_argument("--backbone", help="mlp, cnn, resnet18, timm/<model> or torchvision/<model> (default by input size; "
                   "pretrained names use their packaged or cached weights, frozen)")  # fmt: skip
    p.add_argument("--weights", choices=["none", "package", "file", "download"], help="where the backbone's weights come from")
    p.add_argument("--weights-file", metavar="PATH", help="a safetensors or torch state-dict file in the server's weights directory (relative path)")
    p.add_argument("--train", choices=["frozen", "last", "all"], help="what of the backbone trains")
    p.add_argument("--resolution", type=int, metavar="PX", help="px images are resized to in the model (pretrained)")
    p.add_argument("--manual-approval", action="store_true", help="wait for an admin before promoting")
    p.add_argument("--capture-unknowns", action="store_true", help="keep inputs flagged unknown for "
                   "'engram unknowns export' (refuses jobs with retention discard)")  # fmt: skip
    p.add_argument("--known-rate", type=float, help="share of held-out known samples calibrated as known (0.95)")
    add("list", _list, "list classifiers", clfs)
    p = add("delete", _delete, "delete a classifier with its versions, jobs and captured inputs (admin)", clfs)
    p.add_argument("name")
    p.add_argument("--yes", metavar="NAME", help="the classifier's name again, to confirm")
    p = add("retention", _retention, "show or set the classifier's retention policy (what a prune keeps)", clfs)
    p.add_argument("name")
    p.add_argument("--keep-ancestors", type=int, metavar="N", help="keep the active version's N nearest ancestors")
    p.add_argument("--keep-days", type=float, metavar="D", help="keep every version active or created in D days")
    p.add_argument("--default", action="store_true", help="go back to the deployment's default")
    add("storage", _storage, "artifact-store bytes per classifier")
    p = add("learn", _learn, "learn a task from an ImageFolder-style folder (one subfolder per class), or from "
            "messages: a .csv (columns text,label) or .jsonl file")  # fmt: skip
    p.add_argument("name")
    p.add_argument("folder", metavar="FOLDER_OR_FILE")
    p.add_argument("--task", required=True)
    p.add_argument("--strategy", help="default: the classifier's (its last strategy, else the one measured best for "
                   "its input; see GET /v1/strategies)")
    p.add_argument("--retention", default="keep", choices=["keep", "discard"])
    p.add_argument("--iterations", type=int)
    p = add("predict", _predict, "predict image files, or messages (--text, --text-file)")
    p.add_argument("name")
    p.add_argument("files", nargs="*")
    p.add_argument("--text", action="append", metavar="MESSAGE", help="a message (repeatable)")
    p.add_argument("--text-file", metavar="FILE", help="messages: one a line, or a .csv/.jsonl with a text column")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--task")
    p.add_argument("--version", type=int)
    unknowns = sub.add_parser("unknowns", help="inputs flagged unknown (capture)").add_subparsers(dest="action",
                                                                                                 required=True)  # fmt: skip
    p = add("export", _unknowns_export, "write the captured inputs into FOLDER/unsorted and delete them on the server",
            unknowns)  # fmt: skip
    p.add_argument("name")
    p.add_argument("folder")
    p = add("versions", _versions, "list a classifier's versions; 'versions prune NAME' applies its retention policy")
    p.add_argument("words", nargs="+", metavar="[prune] NAME")
    p.add_argument("--dry-run", action="store_true", help="with prune: show what would go, change nothing")
    p = add("promote", _promote, "make a version active")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--force", action="store_true")
    p.add_argument("--reason")
    p = add("rollback", _rollback, "go back to the previous (or --to) version")
    p.add_argument("name")
    p.add_argument("--to", type=int)
    p.add_argument("--reason")
    p = add("audit", _audit, "who promoted or rolled back what")
    p.add_argument("name")
