"""`palimpsest-operator`: run the RewriteJob controller (Kopf underneath).

Serves Prometheus metrics and a liveness endpoint next to the controller. Watches every
namespace unless `--namespace` names some.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from palimpsest_operator.config import CONFIG


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the object Kopf names."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "k8s_ref", None)
        if isinstance(extra, dict):
            entry["object"] = {k: extra.get(k) for k in ("namespace", "name") if k in extra}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="palimpsest-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=CONFIG.metrics_port, help="port of /metrics (0: off)"
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=CONFIG.liveness_port,
        help="port of the liveness endpoint /healthz (0: off)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log at debug level")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import kopf

    from palimpsest_operator import handlers, metrics

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    del handlers  # imported for its registrations
    metrics.serve(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )


if __name__ == "__main__":
    main()
