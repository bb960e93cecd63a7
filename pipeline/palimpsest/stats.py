"""Per-shard stage statistics: the small JSON that markers carry and status sums up.

Counting happens in one place (`Stats.keep` / `Stats.reject`), so every stage reports the
same shape: records in/kept/rejected, rejects per reason, tokens and seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Width of the score histogram buckets kept in stats (pylint scores are 0-10).
SCORE_BUCKET = 0.5


@dataclass
class Stats:
    records_in: int = 0
    kept: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    requests: int = 0
    seconds: float = 0.0
    engine_seconds: float = 0.0
    gpus: int = 0
    scores: Counter[str] = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    def keep(self) -> None:
        self.records_in += 1
        self.kept += 1

    def reject(self, reason: str) -> None:
        self.records_in += 1
        self.rejects[reason] += 1

    def add_score(self, score: float) -> None:
        bucket = min(int(score / SCORE_BUCKET), int(10 / SCORE_BUCKET) - 1) * SCORE_BUCKET
        self.scores[f"{bucket:.1f}"] += 1

    def merge(self, other: Stats) -> None:
        self.records_in += other.records_in
        self.kept += other.kept
        self.rejects.update(other.rejects)
        self.prompt_tokens += other.prompt_tokens
        self.generated_tokens += other.generated_tokens
        self.requests += other.requests
        self.seconds += other.seconds
        self.engine_seconds += other.engine_seconds
        self.gpus = max(self.gpus, other.gpus)
        self.scores.update(other.scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": {"in": self.records_in, "kept": self.kept, "rejected": self.rejected},
            "rejects": dict(sorted(self.rejects.items())),
            "tokens": {"prompt": self.prompt_tokens, "generated": self.generated_tokens},
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "engine_seconds": round(self.engine_seconds, 3),
            "gpu_seconds": round(self.engine_seconds * self.gpus, 3),
            "gpus": self.gpus,
            "scores": dict(sorted(self.scores.items(), key=lambda kv: float(kv[0]))),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Stats:
        records = data.get("records", {})
        tokens = data.get("tokens", {})
        return Stats(
            records_in=int(records.get("in", 0)),
            kept=int(records.get("kept", 0)),
            rejects=Counter({str(k): int(v) for k, v in data.get("rejects", {}).items()}),
            prompt_tokens=int(tokens.get("prompt", 0)),
            generated_tokens=int(tokens.get("generated", 0)),
            requests=int(data.get("requests", 0)),
            seconds=float(data.get("seconds", 0.0)),
            engine_seconds=float(data.get("engine_seconds", 0.0)),
            gpus=int(data.get("gpus", 0)),
            scores=Counter({str(k): int(v) for k, v in data.get("scores", {}).items()}),
        )
