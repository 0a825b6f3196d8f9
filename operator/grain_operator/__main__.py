"""``python -m grain_operator``: run the Grain operator.

    python -m grain_operator --namespace science [--namespace other ...]
    python -m grain_operator --all-namespaces --liveness http://0.0.0.0:8080/healthz

Namespaces also come from ``GRAIN_WATCH_NAMESPACES`` (comma-separated; empty means all
namespaces) when no flag is given; the default image of GrainClusters without spec.image from
``GRAIN_IMAGE``. See docs/operator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from grain_operator.handlers import operate
from grain_operator.settings import OperatorConfig


def build_parser() -> argparse.ArgumentParser:
    """The operator's command line (also documented in docs/cli.md, generated from it)."""
    parser = argparse.ArgumentParser(prog="python -m grain_operator", description="The Grain Kubernetes operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch GrainClusters in this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch GrainClusters in every namespace")
    parser.add_argument("--liveness", metavar="URL", default=None,
                        help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--image", default=None, help="default image of GrainClusters without spec.image (env GRAIN_IMAGE)")
    parser.add_argument("--resync-seconds", type=float, default=None,
                        help="interval of the reconcile-and-status timer (env GRAIN_OPERATOR_RESYNC_SECONDS, default 15)")
    parser.add_argument("--status-url", default=None,
                        help="template of the executor's /status URL (env GRAIN_OPERATOR_STATUS_URL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def parse_args(argv: list[str] | None = None) -> OperatorConfig:
    """The command line (and environment) as an OperatorConfig."""
    parser = build_parser()
    args = parser.parse_args(argv)

    namespaces = [ns for item in args.namespace for ns in item.split(",") if ns]
    all_namespaces = args.all_namespaces
    if not namespaces and not all_namespaces:
        from_env = [ns for ns in os.environ.get("GRAIN_WATCH_NAMESPACES", "").split(",") if ns.strip()]
        namespaces, all_namespaces = [ns.strip() for ns in from_env], not from_env
    overrides = {
        k: v for k, v in {
            "default_image": args.image, "resync_seconds": args.resync_seconds, "status_url": args.status_url,
        }.items() if v is not None
    }
    try:
        return OperatorConfig(
            namespaces=tuple(namespaces), all_namespaces=all_namespaces, kubeconfig=args.kubeconfig,
            context=args.context, liveness_endpoint=args.liveness, **overrides,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # pragma: no cover - parser.error exits


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    config = parse_args(argv)
    verbose = "-v" in (argv or sys.argv) or "--verbose" in (argv or sys.argv)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    scope = "all namespaces" if config.all_namespaces else ", ".join(config.namespaces)
    logging.getLogger("grain_operator").info("watching GrainClusters in %s", scope)
    asyncio.run(operate(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
