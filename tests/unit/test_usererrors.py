"""Which exit code and line each expected failure gets (the CLI cases run in integration)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from palimpsest.engines.base import EngineDeadError
from palimpsest.localrun import LocalRunError
from palimpsest.storage import StorageError
from palimpsest.usererrors import (
    EXIT_ACCESS_DENIED,
    EXIT_CONFIG_ERROR,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    check_scheme,
    explain,
)


def raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        raise outer from cause
    except BaseException as exc:
        return exc


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")


@pytest.mark.parametrize(
    ("cause", "code", "fix"),
    [
        (client_error("AccessDenied"), EXIT_ACCESS_DENIED, "check the credentials"),
        (client_error("NoSuchBucket"), EXIT_NOT_FOUND, "check the bucket name"),
        (EndpointConnectionError(endpoint_url="http://x"), EXIT_UNREACHABLE, "--s3-endpoint"),
        (FileNotFoundError("in.jsonl"), EXIT_NOT_FOUND, "check the path"),
        (PermissionError("in.jsonl"), EXIT_ACCESS_DENIED, "make it readable"),
        (client_error("InternalError"), EXIT_FAILED, "a re-run resumes"),
    ],
)
def test_storage_errors_by_their_cause(cause: BaseException, code: int, fix: str) -> None:
    explained = explain(raised_from(StorageError("cannot read s3://b/k: boom"), cause))
    assert explained is not None and explained.code == code
    assert explained.line().startswith("error: cannot read s3://b/k: boom")
    assert fix in explained.line()


def test_a_message_that_gives_its_fix_keeps_it() -> None:
    exc = raised_from(LocalRunError("x not found; run from elsewhere"), FileNotFoundError("x"))
    explained = explain(exc)
    assert explained is not None and explained.code == EXIT_NOT_FOUND
    assert explained.line() == "error: x not found; run from elsewhere"


def test_an_engine_failure_is_not_classified_by_what_it_wraps() -> None:
    engine = raised_from(EngineDeadError("offline hub"), FileNotFoundError("config.json"))
    explained = explain(raised_from(LocalRunError("could not load\nthe model"), engine))
    assert explained is not None and explained.code == EXIT_CONFIG_ERROR
    assert explained.line() == "error: could not load the model"  # one line


def test_unexpected_errors_are_left_alone() -> None:
    assert explain(KeyError("bug")) is None


@pytest.mark.parametrize("uri", ["gs://b/k", "s3a://b/k", "https://x/y.jsonl"])
def test_unsupported_schemes(uri: str) -> None:
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        check_scheme(uri)


@pytest.mark.parametrize("uri", ["s3://b/k", "file:///x", "/abs", "rel/path", "C:x"])
def test_served_schemes(uri: str) -> None:
    check_scheme(uri)
