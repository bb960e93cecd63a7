"""Options shared by several commands (S3 endpoint, record fields, filter settings), and the
one way commands report a configuration that cannot work or another expected failure."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from palimpsest.names import EXIT_CONFIG_ERROR
from palimpsest.storage import S3Settings

if TYPE_CHECKING:
    from palimpsest.job import InputSpec, StorageSpec
    from palimpsest.stages.filter import FilterSettings


def config_error(exc: BaseException | str) -> int:
    """Print one line naming what is wrong; the exit code of a configuration error."""
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_CONFIG_ERROR


def user_error(exc: BaseException) -> int:
    """Print the one line for an expected failure; its exit code (3 when not more specific)."""
    from palimpsest.usererrors import explain

    explained = explain(exc)
    if explained is None:
        return config_error(exc)
    print(explained.line(), file=sys.stderr)
    return explained.code


def add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("S3")
    group.add_argument(
        "--s3-endpoint",
        default=None,
        help="S3 endpoint URL for MinIO/Ceph/other S3 (default: AWS, or AWS_ENDPOINT_URL_S3)",
    )
    group.add_argument("--s3-region", default=None, help="S3 region (default: the AWS config)")


def s3_settings(args: argparse.Namespace) -> S3Settings:
    return S3Settings(endpoint_url=args.s3_endpoint, region=args.s3_region)


def add_field_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text-field", default="text", help="record field holding the text (default: text)"
    )
    parser.add_argument(
        "--id-field", default="id", help="record field holding the id (default: id)"
    )


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    from palimpsest.lint.pool import DEFAULT_TIME_LIMIT
    from palimpsest.lint.scoring import DEFAULT_MIN_SCORE

    group = parser.add_argument_group("filter")
    group.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_SCORE,
        help=f"keep samples whose penalised pylint score is >= this (default {DEFAULT_MIN_SCORE})",
    )
    group.add_argument(
        "--workers", type=int, default=None, help="linter processes (default: the number of cores)"
    )
    group.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        help="seconds one sample may spend in pylint before it is rejected "
        f"(default {DEFAULT_TIME_LIMIT:g})",
    )
    group.add_argument(
        "--exact-scores",
        action="store_true",
        help="lint every sample to the end, so every reject carries its exact score (slower)",
    )
    group.add_argument(
        "--repetition",
        action="store_true",
        help="also drop samples with a back-to-back repeated run of >= 100 characters",
    )


def filter_settings(args: argparse.Namespace) -> FilterSettings:
    from palimpsest.stages.filter import FilterSettings

    return FilterSettings(
        min_score=args.min_score,
        time_limit=args.time_limit,
        workers=args.workers,
        exact_scores=args.exact_scores,
        repetition=args.repetition,
    )


def input_spec(args: argparse.Namespace) -> InputSpec:
    from palimpsest.job import InputSpec
    from palimpsest.localrun import resolve_uri

    return InputSpec(
        uri=resolve_uri(args.input), text_field=args.text_field, id_field=args.id_field
    )


def storage_spec(args: argparse.Namespace) -> StorageSpec:
    from palimpsest.job import StorageSpec

    return StorageSpec(endpoint=args.s3_endpoint, region=args.s3_region)
