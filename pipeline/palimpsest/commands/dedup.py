"""`palimpsest dedup IN OUT`: drop exact and near-duplicate records across the whole input.

It runs the steps of `palimpsest.dedup` (signatures, buckets, clusters, filter) in this
process: one record of each cluster of duplicates (the lowest key) goes to OUT, the others to
REJ as `duplicate` with `duplicate_of` naming the kept record's id. Prints the counts.
"""

from __future__ import annotations

import argparse
import json
import sys

from palimpsest.commands._common import (
    add_field_arguments,
    add_s3_arguments,
    config_error,
    s3_settings,
    user_error,
)
from palimpsest.commands.workfolder import default_rejects_uri
from palimpsest.dedupsteps import DedupSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DedupSettings()
    parser.add_argument(
        "input",
        metavar="IN",
        help="input file or prefix (.jsonl[.gz|.zst], .parquet; local or s3://)",
    )
    parser.add_argument("output", metavar="OUT", help="kept records (format from the name)")
    parser.add_argument(
        "--rejects",
        metavar="REJ",
        default=None,
        help="duplicates and unusable records, with reject_reason "
        "(default: OUT with .rejects before the extension)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help="estimated Jaccard similarity of 5-token shingle sets from which two records "
        f"are near duplicates (default {defaults.threshold})",
    )
    parser.add_argument(
        "--records-per-shard",
        type=int,
        default=defaults.records_per_shard,
        help="records per shard of the signature and filter steps; the result does not "
        f"depend on it (default {defaults.records_per_shard})",
    )
    add_field_arguments(parser)
    add_s3_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from palimpsest.dedup import run_dedup
    from palimpsest.localrun import resolve_uri
    from palimpsest.records import CorruptObjectError, Fields, RecordWriter
    from palimpsest.storage import store_for

    try:
        settings = DedupSettings(threshold=args.threshold, records_per_shard=args.records_per_shard)
    except ValueError as exc:
        return config_error(exc)
    s3 = s3_settings(args)
    source = resolve_uri(args.input)
    rejects = args.rejects or default_rejects_uri(args.output)
    kept = RecordWriter(store_for(args.output, s3), args.output)
    rejected = RecordWriter(store_for(rejects, s3), rejects)
    try:
        stats = run_dedup(
            store_for(source, s3),
            source,
            Fields(text=args.text_field, id=args.id_field),
            settings,
            kept.write,
            rejected.write,
        )
    except (ValueError, CorruptObjectError) as exc:
        kept.discard()
        rejected.discard()
        return user_error(exc)
    kept.close()
    rejected.close()
    line = {
        "kept": stats.kept,
        "rejected": stats.rejected,
        "rejects": dict(sorted(stats.rejects.items())),
        "seconds": round(stats.seconds, 3),
    }
    print(json.dumps(line), file=sys.stderr)
    return 0
