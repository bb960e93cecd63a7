"""Exercise the in-process vLLM engine on a tiny model and report what it saw, as JSON.

The project's .venv has no vLLM, so integration tests run this module in the vLLM env's
Python (`python -m tests.vllm.engine_probe MODEL_DIR [--model s3://...]`) and assert on the JSON
it prints on its last line. One engine start serves every check, because starting vLLM is the
slow part. Token counts are compared with the model's tokenizer loaded separately through
transformers from MODEL_DIR; `--model` makes the engine load the same model from elsewhere
(an s3:// copy). `--count-only` prints just those expected counts, for the tests that send the
same messages to `vllm serve`.

The `__main__` guard matters: vLLM starts worker processes that re-import the main module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from palimpsest.engines import (
    ChatMessage,
    EngineDeadError,
    EngineSettings,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    make_engine,
)
from palimpsest.engines.vllm_engine import VllmEngine, fold_system_into_user
from palimpsest.identity import check_tools
from tests.vllm.env import CPU_ENGINE_ARGS

MAX_MODEL_LEN = 256
MAX_TOKENS = 16
SYSTEM = "You rewrite code."
TEXTS = [
    "def add(x, y):\n    return x + y\n",
    "the answer is 42.",
    "import os\nprint(os.getcwd())",
    "solve 2x + 3 = 11",
    "class Data:\n    pass",
    "日本語のテキストも使えます",
]
CACHED_TEXT = " ".join(f"word{i}" for i in range(40))
"""About 200 prompt tokens: over one KV block of the CPU build (128 tokens), so a prefix of it
can be cached, and under the prompt budget."""
LONG_TEXT = " ".join(f"word{i} value{i * 7}" for i in range(400))
"""Thousands of tokens: over any budget the tests use."""


def messages(text: str, system: str | None = SYSTEM) -> tuple[ChatMessage, ...]:
    turns = [ChatMessage("system", system)] if system else []
    return (*turns, ChatMessage("user", text))


def template_length(tokenizer: Any, turns: tuple[ChatMessage, ...]) -> int:
    encoded = tokenizer.apply_chat_template(
        [m.as_dict() for m in turns], tokenize=True, add_generation_prompt=True
    )
    if not isinstance(encoded, list):
        encoded = encoded["input_ids"]
    return len(encoded)


def summary(result: GenerationResult) -> dict[str, Any]:
    return {
        "request_id": result.request_id,
        "error": result.error,
        "prompt_tokens": result.prompt_tokens,
        "completions": [
            {
                "finish_reason": c.finish_reason,
                "generated_tokens": c.generated_tokens,
                "text": c.text,
            }
            for c in result.completions
        ],
    }


def expected_counts(model_dir: Path) -> dict[str, Any]:
    """Prompt token counts of TEXTS (and of the over-long prompt), by the model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return {
        "expected_prompt_tokens": [template_length(tokenizer, messages(t)) for t in TEXTS],
        "too_long_template_tokens": template_length(tokenizer, messages(LONG_TEXT)),
    }


def version_of_vllm() -> str:
    import vllm

    return str(vllm.__version__)


async def probe(model_dir: Path, model: str, no_system_model: Path | None) -> dict[str, Any]:
    report: dict[str, Any] = expected_counts(model_dir)
    settings = EngineSettings(
        type="vllm",
        model=model,
        max_model_len=MAX_MODEL_LEN,
        dtype="float32",
        sampling=SamplingSettings(max_tokens=MAX_TOKENS, seed=1234),
        max_in_flight=8,
        engine_args={"max_num_seqs": 8, **CPU_ENGINE_ARGS},
    )
    engine = make_engine(settings)
    assert isinstance(engine, VllmEngine)
    async with engine:
        report["load_seconds"] = engine.load_seconds
        report["prompt_budget"] = engine.prompt_budget
        report["gpus"] = engine.gpus
        report["vllm_version"] = version_of_vllm()
        report["tool_problems"] = check_tools(("vllm",))

        requests = [GenerationRequest(f"r{i}", messages(t)) for i, t in enumerate(TEXTS)]
        started = time.monotonic()
        results = await asyncio.gather(*(engine.generate(r) for r in requests))
        report["concurrent_seconds"] = time.monotonic() - started
        report["concurrent"] = [summary(r) for r in results]

        long = GenerationRequest("too-long", messages(LONG_TEXT))
        report["too_long"] = summary(await engine.generate(long))
        report["after_too_long"] = summary(await engine.generate(requests[0]))

        two = GenerationRequest("n2", messages(TEXTS[0]), n=2)
        report["n2"] = summary(await engine.generate(two))

        burst = [GenerationRequest(f"b{i}", messages(f"{TEXTS[i % 6]} {i}")) for i in range(16)]
        started = time.monotonic()
        burst_results = await asyncio.gather(*(engine.generate(r) for r in burst))
        seconds = time.monotonic() - started
        generated = sum(r.generated_tokens for r in burst_results)
        report["burst"] = {"requests": 16, "generated_tokens": generated, "seconds": seconds}
        cached = GenerationRequest("cached", messages(CACHED_TEXT))
        report["prefix_cache"] = await prefix_cache_check(engine, cached)
        report["engine_seconds"] = engine.engine_seconds
        report["dead"] = await kill_engine_core_then_generate(engine)
    report["engine_seconds_after_close"] = engine.engine_seconds

    if no_system_model is not None:
        report["fold"] = fold_check(no_system_model)
    return report


def prefix_cache_hits() -> float:
    """Prompt tokens vLLM has found in its prefix cache so far (its metrics counter)."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot  # type: ignore[import-not-found]

    return sum(
        float(metric.value)
        for metric in get_metrics_snapshot()
        if isinstance(metric, Counter) and metric.name == "vllm:prefix_cache_hits"
    )


async def prefix_cache_check(engine: VllmEngine, request: GenerationRequest) -> dict[str, Any]:
    """Cached prompt tokens found by a request sent again, then sent after the cache is reset."""
    await engine.generate(request)
    before = prefix_cache_hits()
    await engine.generate(request)
    again = prefix_cache_hits() - before
    reset = await engine.reset_prefix_cache()
    before = prefix_cache_hits()
    await engine.generate(request)
    return {"hits_again": again, "reset": reset, "hits_after_reset": prefix_cache_hits() - before}


async def kill_engine_core_then_generate(engine: VllmEngine) -> dict[str, Any]:
    """Kill vLLM's engine processes (as an OOM kill or a GPU fault would), then ask for more:
    the engine must raise EngineDeadError, not hang and not answer."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=10)
    started = time.monotonic()
    request = GenerationRequest("after-death", messages("hello"))
    try:
        await asyncio.wait_for(engine.generate(request), timeout=60)
        outcome = "answered"
    except EngineDeadError:
        outcome = "EngineDeadError"
    except TimeoutError:
        outcome = "hung"
    return {
        "killed": len(children),
        "outcome": outcome,
        "seconds": time.monotonic() - started,
    }


def fold_check(model_dir: Path) -> dict[str, Any]:
    """The system turn is folded into the user turn for a template that rejects it; this
    needs only the tokenizer, so the engine's template step is run without starting vLLM."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    engine = VllmEngine(EngineSettings(type="vllm", model=str(model_dir)))
    engine._tokenizer = tokenizer  # the step under test, without loading the model
    turns = messages("hello")
    rejected = False
    try:
        template_length(tokenizer, turns)
    except Exception:
        rejected = True
    ids = engine.prompt_token_ids(turns)
    again = engine.prompt_token_ids(turns)
    return {
        "template_rejects_system": rejected,
        "ids": ids,
        "again": again,
        "expected": template_length(tokenizer, fold_system_into_user(turns)),
        "folded_flag": engine._fold_system,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--model", help="what the engine loads (default: MODEL_DIR)")
    parser.add_argument("--no-system-model", type=Path)
    parser.add_argument("--count-only", action="store_true")
    args = parser.parse_args(argv)
    if args.count_only:
        report = expected_counts(args.model_dir)
    else:
        model = args.model or str(args.model_dir)
        report = asyncio.run(probe(args.model_dir, model, args.no_system_model))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
