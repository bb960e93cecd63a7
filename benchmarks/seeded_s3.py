"""moto's S3 server with one more route, which commits benchmark markers inside the server.

Seeding 100,000 markers through S3 PUTs costs ~7 ms each on moto (its HTTP and XML handling
run on one core, whatever the client's concurrency): 11 minutes before a benchmark measures
anything, and more on a busy machine. `POST /_bench/markers?bucket=B&stage=KEY&first=I&end=J
&parts=P` puts the markers of shards I..J-1 of the stage folder KEY straight into moto's
backend (~0.4 ms each), with the bytes `palimpsest_operator.bench.bench_marker` gives. Every
other request is moto's own server, so the operator under benchmark reads over HTTP as from
any S3. Run as `python benchmarks/seeded_s3.py -H 127.0.0.1 -p PORT` (moto.server's flags).
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends
from werkzeug.serving import run_simple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pipeline"), str(REPO / "operator")]

from palimpsest.commit import marker_uri  # noqa: E402
from palimpsest_operator.bench import bench_marker  # noqa: E402

SEED_PATH = "/_bench/markers"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def seed(query: dict[str, str]) -> int:
    """Put the markers the query names into moto's backend; returns how many."""
    bucket, stage_key = query["bucket"], query["stage"]
    stage_uri = f"s3://{bucket}/{stage_key}"
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    shards = range(int(query["first"]), int(query["end"]))
    for shard in shards:
        key = marker_uri(stage_uri, shard).removeprefix(f"s3://{bucket}/")
        backend.put_object(bucket, key, bench_marker(stage_uri, shard, int(query["parts"])))
    return len(shards)


def app(moto: Any) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != SEED_PATH:
            return moto(environ, start_response)  # type: ignore[no-any-return]
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        body = str(seed(query)).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="seeded_s3.py")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    moto = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, app(moto), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
