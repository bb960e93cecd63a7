"""Benchmark-only vLLM logits processor: answers of realistic, long-tailed lengths on any model.

A random model never emits EOS, so every answer would stop at max_tokens and a static chunk
would never wait for a slow member. This processor decides each request's answer from its
prompt tokens alone, so the published method and ours, fed the same prompts, get the same
answers of the same lengths:
- the stage is recognised by the first tokens of the prompt (its system turn), each stage with
  its own mean answer length;
- the length is drawn from a lognormal of that mean, seeded by a CRC of the prompt's tokens;
- the answer is a ```python block of distinct assignment lines followed by EOS, so the rewrite
  stages keep it (it is long enough, not repetitive, and it compiles) and SCOR runs on
  SGCR's output as it would on a real rewriter's.
Every token is forced (all other logits set to -inf), so sampling settings do not matter.

Each step it appends "<wall time> <rows>" to the file named by $ANSWER_STATS_ENV, so the
benchmark can tell how full the engine's batches were during a timed window.

Configuration comes from the JSON in $ANSWER_CONFIG_ENV (the processor runs in vLLM's engine
process, which only gets the environment): {"stages": [{"prefix": [ids], "mean": tokens}],
"sigma": lognormal sigma, "max_tokens": cap}.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import zlib
from typing import Any

import torch  # type: ignore[import-not-found]
from transformers import AutoTokenizer
from vllm.v1.sample.logits_processor import (  # type: ignore[import-not-found]
    BatchUpdate,
    LogitsProcessor,
)
from vllm.v1.sample.logits_processor.builtin import (  # type: ignore[import-not-found]
    process_dict_updates,
)

ANSWER_CONFIG_ENV = "PALIMPSEST_BENCH_ANSWERS"
ANSWER_STATS_ENV = "PALIMPSEST_BENCH_STEPS"
OPEN, CLOSE = "```python\n", "```\n"
LINES = 4096
"""Distinct code lines pre-tokenised; an answer takes a run of them from a seeded start."""
MIN_LINES = 3
"""Lines of the shortest answer: over the 50 characters the stages keep."""


def code_line(number: int) -> str:
    return f"value_{number:04d} = {number * 7919 % 10007}\n"


def answer_length(prompt_ids: list[int], mean: float, sigma: float, cap: int) -> int:
    """Tokens of the answer to this prompt: lognormal with this mean, seeded by the prompt."""
    seed = zlib.crc32(b"".join(t.to_bytes(4, "little") for t in prompt_ids))
    drawn = random.Random(seed).lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
    return max(1, min(cap, round(drawn)))


class ForcedAnswers(LogitsProcessor):  # type: ignore[misc]
    """Forces each request's answer token by token (see the module docstring)."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        config = json.loads(os.environ[ANSWER_CONFIG_ENV])
        self.stages: list[tuple[list[int], float]] = [
            (s["prefix"], float(s["mean"])) for s in config["stages"]
        ]
        self.sigma = float(config["sigma"])
        self.cap = int(config["max_tokens"])
        tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        self.eos = int(tokenizer.eos_token_id)
        encode = tokenizer.encode
        self.open = encode(OPEN, add_special_tokens=False)
        self.close = [*encode(CLOSE, add_special_tokens=False), self.eos]
        self.lines = [encode(code_line(i), add_special_tokens=False) for i in range(LINES)]
        self.answers: dict[int, tuple[list[int], list[int]]] = {}
        """Batch row -> (the forced answer, the request's live output token list)."""
        path = os.environ.get(ANSWER_STATS_ENV)
        # Open for the engine's life, one line per step, flushed per line.
        self.steps = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(
            self.answers,
            batch_update,
            lambda _params, prompt, output: (self.answer(prompt), output),
        )

    def answer(self, prompt_ids: list[int] | None) -> list[int]:
        ids = list(prompt_ids or [])
        mean = next((m for prefix, m in self.stages if ids[: len(prefix)] == prefix), None)
        if mean is None:  # not a benchmark prompt (e.g. a warm-up): a short answer
            mean = 16.0
        length = answer_length(ids, mean, self.sigma, self.cap)
        rng = random.Random(zlib.crc32(repr(ids[-16:]).encode()))
        first = rng.randrange(LINES)
        forced = list(self.open)
        number = first
        while len(forced) + len(self.close) < length or number - first < MIN_LINES:
            forced += self.lines[number % LINES]
            number += 1
        return forced + self.close

    def apply(self, logits: Any) -> Any:
        if self.steps is not None:
            self.steps.write(f"{time.time():.4f} {logits.shape[0]}\n")
        if not self.answers:
            return logits
        rows, tokens = [], []
        for row, (forced, output) in self.answers.items():
            rows.append(row)
            tokens.append(forced[min(len(output), len(forced) - 1)])
        row_index = torch.tensor(rows, dtype=torch.long)
        logits[row_index] = float("-inf")
        logits[row_index, torch.tensor(tokens, dtype=torch.long)] = 0.0
        return logits
