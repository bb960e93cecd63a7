"""The OpenAI-compatible engine against a scripted local server: answers and token counts,
retries and backoff, timeouts, the in-flight bound, and how failures are classified."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from palimpsest.engines import (
    BAD_REQUEST,
    PROMPT_TOO_LONG,
    REQUEST_FAILED,
    ChatMessage,
    EngineDeadError,
    EngineSettings,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    make_engine,
)
from palimpsest.engines.openai_engine import OpenAIEngine
from tests.support.openai_server import Reply, ScriptedOpenAIServer


@pytest.fixture()
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer().run() as running:
        yield running


def settings(base_url: str, **overrides: Any) -> EngineSettings:
    """Fast settings for tests: short backoff and timeouts."""
    values: dict[str, Any] = {
        "type": "openai",
        "model": "tiny",
        "base_url": base_url,
        "max_attempts": 4,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "request_timeout": 5.0,
        "connect_timeout": 1.0,
    }
    values.update(overrides)
    return EngineSettings(**values)


def request(text: str, request_id: str | None = None, n: int | None = None) -> GenerationRequest:
    messages = (ChatMessage("system", "be brief"), ChatMessage("user", text))
    return GenerationRequest(request_id or text, messages, n=n)


async def run_one(engine_settings: EngineSettings, req: GenerationRequest) -> GenerationResult:
    async with make_engine(engine_settings) as engine:
        return await engine.generate(req)


def generate(engine_settings: EngineSettings, req: GenerationRequest) -> GenerationResult:
    return asyncio.run(run_one(engine_settings, req))


def test_answer_text_finish_reason_and_usage(server: ScriptedOpenAIServer) -> None:
    server.script("hello", Reply(text="hi there", prompt_tokens=13, completion_tokens=3))
    result = generate(settings(server.base_url), request("hello"))
    assert result.error is None
    assert result.request_id == "hello"
    assert result.prompt_tokens == 13
    assert [(c.text, c.finish_reason, c.generated_tokens) for c in result.completions] == [
        ("hi there", "stop", 3)
    ]
    assert server.served() == 1


def test_request_body_carries_model_messages_and_published_sampling(
    server: ScriptedOpenAIServer,
) -> None:
    generate(settings(server.base_url), request("x"))
    body = server.received[0].body
    assert body["model"] == "tiny"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "x"},
    ]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["n"]) == (
        0.2,
        0.7,
        8192,
        1,
    )
    assert "seed" not in body
    seeded = settings(server.base_url, sampling=SamplingSettings(seed=7, max_tokens=64))
    generate(seeded, request("y"))
    assert server.received[1].body["seed"] == 7
    assert server.received[1].body["max_tokens"] == 64


def test_length_finish_reason_is_reported_as_is(server: ScriptedOpenAIServer) -> None:
    server.script("long", Reply(text="cut", finish_reason="length", completion_tokens=8192))
    result = generate(settings(server.base_url), request("long"))
    assert result.completions[0].finish_reason == "length"
    assert result.completions[0].generated_tokens == 8192


def test_n_completions_count_the_prompt_once_and_share_the_generated_total(
    server: ScriptedOpenAIServer,
) -> None:
    server.script("two", Reply(text=["a", "b", "c"], prompt_tokens=20, completion_tokens=10))
    result = generate(settings(server.base_url), request("two", n=3))
    assert server.received[0].body["n"] == 3
    assert [c.text for c in result.completions] == ["a", "b", "c"]
    assert result.prompt_tokens == 20
    assert [c.generated_tokens for c in result.completions] == [4, 3, 3]
    assert result.generated_tokens == 10


def test_settings_n_is_the_default_for_requests(server: ScriptedOpenAIServer) -> None:
    result = generate(settings(server.base_url, sampling=SamplingSettings(n=2)), request("q"))
    assert server.received[0].body["n"] == 2
    assert len(result.completions) == 2


def test_missing_usage_counts_zero_tokens(server: ScriptedOpenAIServer) -> None:
    server.script("nousage", Reply(text="t", usage=False))
    result = generate(settings(server.base_url), request("nousage"))
    assert result.error is None
    assert (result.prompt_tokens, result.generated_tokens) == (0, 0)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_retries_transient_statuses_until_success(
    server: ScriptedOpenAIServer, status: int
) -> None:
    server.script("flaky", Reply(status=status), Reply(status=status), Reply(text="finally"))
    result = generate(settings(server.base_url), request("flaky"))
    assert result.error is None
    assert result.completions[0].text == "finally"
    assert server.served("flaky") == 3


def test_retries_dropped_connections(server: ScriptedOpenAIServer) -> None:
    server.script("drop", Reply(drop=True), Reply(text="back"))
    result = generate(settings(server.base_url), request("drop"))
    assert result.completions[0].text == "back"
    assert server.served("drop") == 2


def test_backoff_grows_between_attempts(server: ScriptedOpenAIServer) -> None:
    server.script("slow", Reply(status=500), Reply(status=500), Reply(status=500), Reply())
    fast = settings(server.base_url, backoff_initial=0.1, backoff_max=1.0)
    result = generate(fast, request("slow"))
    assert result.error is None
    at = server.arrivals("slow")
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # Delays are 0.1, 0.2, 0.4 s, jittered over their upper half.
    for gap, nominal in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert nominal / 2 <= gap < nominal + 0.5


def test_retry_after_header_is_honoured(server: ScriptedOpenAIServer) -> None:
    server.script("busy", Reply(status=429, headers={"Retry-After": "0.4"}), Reply())
    result = generate(settings(server.base_url, backoff_max=1.0), request("busy"))
    assert result.error is None
    first, second = server.arrivals("busy")
    assert second - first >= 0.4


def test_a_request_failing_with_500_after_all_attempts_is_a_per_request_error(
    server: ScriptedOpenAIServer,
) -> None:
    server.script("broken", Reply(status=500))
    result = generate(settings(server.base_url, max_attempts=3), request("broken"))
    assert result.error == REQUEST_FAILED
    assert (result.prompt_tokens, result.completions) == (0, ())
    assert server.served("broken") == 3


def test_an_unavailable_endpoint_after_all_attempts_kills_the_engine(
    server: ScriptedOpenAIServer,
) -> None:
    server.script("down", Reply(status=503))

    async def scenario() -> None:
        async with make_engine(settings(server.base_url, max_attempts=2)) as engine:
            with pytest.raises(EngineDeadError, match="unavailable"):
                await engine.generate(request("down"))
            with pytest.raises(EngineDeadError):
                await engine.generate(request("anything else"))

    asyncio.run(scenario())
    assert server.served("down") == 2
    assert server.served("anything else") == 0


def test_connection_refused_kills_the_engine() -> None:
    with ScriptedOpenAIServer().run() as gone:
        url = gone.base_url  # a free port, closed when the block ends
    with pytest.raises(EngineDeadError):
        generate(settings(url, max_attempts=2), request("x"))


def test_timeouts_are_retried(server: ScriptedOpenAIServer) -> None:
    server.script("stuck", Reply(delay=1.0), Reply(text="quick"))
    result = generate(settings(server.base_url, request_timeout=0.3), request("stuck"))
    assert result.completions[0].text == "quick"
    assert server.served("stuck") == 2


def test_a_request_that_always_times_out_fails_alone(server: ScriptedOpenAIServer) -> None:
    server.script("stuck", Reply(delay=0.6))
    tight = settings(server.base_url, request_timeout=0.2, max_attempts=2)

    async def scenario() -> list[GenerationResult]:
        async with make_engine(tight) as engine:
            return [await engine.generate(request("stuck")), await engine.generate(request("ok"))]

    stuck, ok = asyncio.run(scenario())
    assert stuck.error == REQUEST_FAILED
    assert ok.error is None
    assert server.served("stuck") == 2


def test_context_length_400_is_prompt_too_long_without_retry(server: ScriptedOpenAIServer) -> None:
    server.script("huge", Reply.context_too_long())
    result = generate(settings(server.base_url), request("huge"))
    assert result.error == PROMPT_TOO_LONG
    assert server.served("huge") == 1


def test_413_is_prompt_too_long(server: ScriptedOpenAIServer) -> None:
    server.script("huge", Reply(status=413, message="payload too large"))
    assert generate(settings(server.base_url), request("huge")).error == PROMPT_TOO_LONG


@pytest.mark.parametrize("status", [400, 422])
def test_other_client_errors_are_bad_requests_without_retry(
    server: ScriptedOpenAIServer, status: int
) -> None:
    server.script("odd", Reply(status=status, message="temperature must be a number"))
    result = generate(settings(server.base_url), request("odd"))
    assert result.error == BAD_REQUEST
    assert server.served("odd") == 1


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_and_not_found_kill_the_engine(server: ScriptedOpenAIServer, status: int) -> None:
    server.script("k", Reply(status=status, message="no such model"))
    with pytest.raises(EngineDeadError, match=str(status)):
        generate(settings(server.base_url), request("k"))
    assert server.served("k") == 1


def test_malformed_success_body_is_a_failed_request(server: ScriptedOpenAIServer) -> None:
    server.script("garbled", Reply(raw_body="{not json"))
    assert generate(settings(server.base_url), request("garbled")).error == REQUEST_FAILED


def test_many_failed_requests_in_a_row_kill_the_engine(server: ScriptedOpenAIServer) -> None:
    for i in range(5):
        server.script(f"bad{i}", Reply(status=500))
    strict = settings(server.base_url, max_attempts=1, max_consecutive_failures=3)

    async def scenario() -> list[str | None]:
        errors: list[str | None] = []
        async with make_engine(strict) as engine:
            errors.append((await engine.generate(request("bad0"))).error)
            errors.append((await engine.generate(request("fine"))).error)  # resets the count
            errors.append((await engine.generate(request("bad1"))).error)
            errors.append((await engine.generate(request("bad2"))).error)
            with pytest.raises(EngineDeadError, match="in a row"):
                await engine.generate(request("bad3"))
        return errors

    assert asyncio.run(scenario()) == [REQUEST_FAILED, None, REQUEST_FAILED, REQUEST_FAILED]


def test_in_flight_requests_are_bounded(server: ScriptedOpenAIServer) -> None:
    texts = [f"r{i}" for i in range(20)]
    for text in texts:
        server.script(text, Reply(text=text.upper(), delay=0.1))

    async def scenario() -> list[GenerationResult]:
        async with make_engine(settings(server.base_url, max_in_flight=4)) as engine:
            assert engine.max_in_flight == 4
            return await asyncio.gather(*(engine.generate(request(t)) for t in texts))

    results = asyncio.run(scenario())
    assert [r.completions[0].text for r in results] == [t.upper() for t in texts]
    assert server.max_in_flight == 4
    assert server.served() == 20


def test_token_totals_equal_the_sum_of_server_usage(server: ScriptedOpenAIServer) -> None:
    texts = [f"t{i}" for i in range(10)]
    for i, text in enumerate(texts):
        server.script(text, Reply(prompt_tokens=100 + i, completion_tokens=i))

    async def scenario() -> list[GenerationResult]:
        async with make_engine(settings(server.base_url)) as engine:
            return await asyncio.gather(*(engine.generate(request(t)) for t in texts))

    results = asyncio.run(scenario())
    assert sum(r.prompt_tokens for r in results) == sum(100 + i for i in range(10))
    assert sum(r.generated_tokens for r in results) == sum(range(10))


def test_api_key_comes_from_the_named_environment_variable(
    server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    generate(settings(server.base_url), request("anon"))
    assert "authorization" not in server.received[-1].headers
    monkeypatch.setenv("MY_KEY", "s3cret")
    generate(settings(server.base_url, api_key_env="MY_KEY"), request("keyed"))
    assert server.received[-1].headers["authorization"] == "Bearer s3cret"


def test_engine_seconds_and_gpus(server: ScriptedOpenAIServer) -> None:
    engine_settings = settings(server.base_url, revision="r1")

    async def scenario() -> OpenAIEngine:
        engine = make_engine(engine_settings)
        assert isinstance(engine, OpenAIEngine)
        async with engine:
            await engine.generate(request("x"))
        return engine

    engine = asyncio.run(scenario())
    assert engine.gpus == 0
    assert engine.engine_seconds > 0
    frozen = engine.engine_seconds
    assert engine.engine_seconds == frozen  # stopped at close()


def test_generate_before_start_is_an_error(server: ScriptedOpenAIServer) -> None:
    engine = make_engine(settings(server.base_url))
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(engine.generate(request("x")))
