"""`palimpsest gc OUTPUT_URI [--delete]`: find (and remove) what no marker lists.

A dry run by default: it prints, per stage folder, how many objects and bytes would be freed.
"""

from __future__ import annotations

import argparse
import json
import sys

from palimpsest.commands._common import add_s3_arguments, s3_settings, user_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT_URI", help="a job's output folder or s3:// URI")
    parser.add_argument(
        "--delete",
        action="store_true",
        help="delete the unreferenced objects (default: only print what would be freed)",
    )
    add_s3_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from palimpsest.gc import delete_all, find_garbage
    from palimpsest.storage import StorageError, store_for

    store = store_for(args.output, s3_settings(args))
    try:
        garbage = find_garbage(store, args.output)
    except StorageError as exc:
        return user_error(exc)
    for stage, objects in garbage.objects.items():
        size = sum(o.size for o in objects)
        verb = "deleting" if args.delete else "would free"
        print(f"{stage}: {verb} {len(objects)} objects, {size} bytes", file=sys.stderr)
        if args.delete:
            delete_all(store, objects)
    summary = {"objects": garbage.count, "bytes": garbage.bytes, "deleted": bool(args.delete)}
    print(json.dumps(summary))
    return 0
