"""`palimpsest-operator`: run the RewriteJob controller (Kopf underneath).

Serves Prometheus metrics and a liveness endpoint next to the controller. Watches every
namespace unless `--namespace` names some.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from palimpsest_operator.config import CONFIG


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

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format='{"time": "%(asctime)s", "level": "%(levelname)s", "logger": "%(name)s", '
        '"message": %(message)r}',
    )
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
