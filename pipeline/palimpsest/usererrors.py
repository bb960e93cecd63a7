"""Expected failures of the command line, as one line naming the thing and the fix.

A person running `palimpsest` makes the usual mistakes: a path that does not exist from where
they stand, a file they cannot read, a URI scheme we do not serve, S3 credentials that are
refused or an endpoint that does not answer, a YAML typo, a misspelt spec field, a model folder
without its `config.json`. Each gets one line (`error: <what>; <how to fix it>`) and its own
exit code, so scripts can tell them apart; unexpected failures (bugs) keep their traceback.

Exit codes (also in README.md):
  0 done; 1 other failures (a re-run resumes); 2 bad command-line usage (argparse);
  3 a job, spec or flag that cannot run as written (YAML typo, unknown field, bad value,
    unsupported URI scheme); workers use it for "never retry this index";
  4 an input, job file or bucket that does not exist;
  5 access denied (a local file's permissions, or S3 refusing the credentials);
  6 the S3 endpoint cannot be reached;
  7 a model folder vLLM cannot load (no config.json).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from palimpsest.names import EXIT_CONFIG_ERROR

EXIT_FAILED: Final = 1
EXIT_NOT_FOUND: Final = 4
EXIT_ACCESS_DENIED: Final = 5
EXIT_UNREACHABLE: Final = 6
EXIT_MODEL: Final = 7

S3_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
        "403",
        "Forbidden",
    }
)
S3_MISSING_CODES: Final = frozenset({"NoSuchBucket"})

CREDENTIALS_FIX: Final = (
    "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
    "spec.storage.secretRef) and that the bucket's policy grants them access"
)
ENDPOINT_FIX: Final = (
    "check the S3 endpoint (--s3-endpoint, spec.storage.endpoint or AWS_ENDPOINT_URL_S3) "
    "and that it is up"
)


class ModelFolderError(ValueError):
    """A local model folder the engine cannot load; the message names the folder."""


@dataclass(frozen=True)
class UserError:
    """What to print for an expected failure, and the exit code."""

    code: int
    message: str

    def line(self) -> str:
        return "error: " + " ".join(self.message.split())


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and the ones it was raised from, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _is_unreachable(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
    except ImportError:  # pragma: no cover - boto3 is a base dependency
        return False
    return isinstance(exc, EndpointConnectionError | ConnectTimeoutError)


def _classify_cause(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, the fix) for a root cause we know, else None."""
    if _is_unreachable(exc):
        return EXIT_UNREACHABLE, ENDPOINT_FIX
    code = _s3_code(exc)
    if code in S3_DENIED_CODES:
        return EXIT_ACCESS_DENIED, CREDENTIALS_FIX
    if code in S3_MISSING_CODES:
        return EXIT_NOT_FOUND, "check the bucket name in the URI (and the S3 endpoint)"
    if isinstance(exc, ModelFolderError):
        return EXIT_MODEL, ""
    if isinstance(exc, PermissionError):
        return EXIT_ACCESS_DENIED, "make it readable (and its folder writable) for this user"
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return EXIT_NOT_FOUND, "check the path (relative paths start at the current directory)"
    return None


def explain(exc: BaseException) -> UserError | None:
    """The line and exit code for an expected failure; None for one we do not expect."""
    from palimpsest.engines.base import EngineError
    from palimpsest.localrun import LocalRunError
    from palimpsest.records import CorruptObjectError
    from palimpsest.storage import StorageError

    for cause in causes(exc):
        if isinstance(cause, EngineError):
            break  # an engine's own failure (e.g. a hub lookup offline) is not a storage fault
        found = _classify_cause(cause)
        if found is not None:
            code, fix = found
            message = str(exc)
            if fix and "; " not in message:  # a message that gives its own fix keeps it
                message = f"{message}; {fix}"
            return UserError(code, message)
    if isinstance(exc, CorruptObjectError):
        return UserError(EXIT_CONFIG_ERROR, str(exc))  # the same bytes fail every re-run
    if isinstance(exc, StorageError):
        return UserError(EXIT_FAILED, f"{exc}; a re-run resumes")
    if isinstance(exc, ValueError | LocalRunError):
        return UserError(EXIT_CONFIG_ERROR, str(exc))
    return None


URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SERVED_SCHEMES: Final = ("s3", "file")


def check_scheme(uri: str) -> None:
    """ValueError for a URI whose scheme no store serves (e.g. gs://, s3a://, https://)."""
    match = URI_SCHEME.match(uri)
    if match and match.group(1) not in SERVED_SCHEMES:
        raise ValueError(
            f"{uri}: unsupported URI scheme {match.group(1)}://; use a local path or s3:// "
            "(other S3-compatible stores: s3:// with --s3-endpoint or spec.storage.endpoint)"
        )
