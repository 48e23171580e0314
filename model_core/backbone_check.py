"""Check or fetch pretrained backbone weights in a process of their own (the API process never imports torch).

    python -m model_core.backbone_check check < {"network": {...}, "cache_dir": ..., "allow_download": ...}
        prints {"network": <the spec with sha256 and preprocessing recorded>} or {"error": "...", "kind": ...}
    python -m model_core.backbone_check serve [--idle-exit 300]
        the same for one request per stdin line, each answer one stdout line after the ANSWER marker, so
        torch and timm are imported once; exits at end of input or after that many idle seconds
    python -m model_core.backbone_check fetch timm/resnet50 torchvision/resnet18 --cache-dir DIR
        downloads each backbone's weights into DIR (the Dockerfile bakes weights into an image this way)
"""

from __future__ import annotations

import argparse
import json
import select
import sys
from typing import Any

ANSWER = "engram-backbone-check: "  # marks answer lines, should anything else print to stdout


def check(request: dict[str, Any]) -> dict[str, Any]:
    """The resolved network spec, or the error a client should see."""
    from model_core.config import NetworkSpec, WeightsAccess
    from model_core.networks.pretrained import resolve_network_spec
    from model_core.networks.weights import BackboneError, WeightsError

    access = WeightsAccess(request.get("cache_dir"), bool(request.get("allow_download")), request.get("files_dir"))
    try:
        spec = resolve_network_spec(NetworkSpec.from_dict(request["network"]), access)
    except WeightsError as exc:
        return {"error": str(exc), "kind": "weights"}
    except (BackboneError, ValueError) as exc:
        return {"error": str(exc), "kind": "backbone"}
    return {"network": spec.to_dict()}


def serve(idle_exit: float) -> None:
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], idle_exit)
        line = sys.stdin.readline() if ready else ""
        if not line:  # idle too long, or the parent went away
            return
        try:
            answer = check(json.loads(line))
        except Exception as exc:  # a malformed request: answer it, keep serving
            answer = {"error": f"bad check request: {exc}", "kind": "request"}
        print(ANSWER + json.dumps(answer), flush=True)


def fetch(names: list[str], cache_dir: str) -> None:
    from model_core.config import BackboneSpec, InputSpec, NetworkSpec, WeightsAccess
    from model_core.networks.pretrained import resolve_network_spec

    for name in (n for arg in names for n in arg.replace(",", " ").split()):  # "a b", "a,b" or a b
        spec = NetworkSpec(InputSpec("image", 3, 224, 224), BackboneSpec(name, cache_dir=cache_dir))
        bb = resolve_network_spec(spec, WeightsAccess(cache_dir, allow_download=True)).backbone
        print(f"{name}: {bb.weights} weights, sha256 {bb.sha256}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_core.backbone_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="check the spec read as JSON from stdin")
    p = sub.add_parser("serve", help="check one request per stdin line until end of input")
    p.add_argument("--idle-exit", type=float, default=300.0, help="exit after this many seconds without a request")
    p = sub.add_parser("fetch", help="download backbones' weights into a cache dir")
    p.add_argument("names", nargs="*", help="e.g. timm/resnet50 torchvision/resnet18 (package weights need none)")
    p.add_argument("--cache-dir", required=True)
    args = parser.parse_args(argv)
    if args.command == "check":
        print(json.dumps(check(json.load(sys.stdin))))
    elif args.command == "serve":
        serve(args.idle_exit)
    else:
        fetch(args.names, args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
