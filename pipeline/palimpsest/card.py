"""The dataset card: a `README.md` in the Hugging Face dataset-card format next to a job's outputs.

A finished job's output folder is a dataset someone will publish or load; the card says what
it holds and how it was made, from the markers alone (so a re-run writes the same card): a YAML
header whose `configs` point `data_files` at the final stage's committed parts (so
`datasets.load_dataset(OUTPUT)` reads exactly them), license and language from `spec.card`,
then records in/kept/rejected per stage with the top reject reasons, token counts and length
distribution of the final texts, the stage ids, the pinned tool versions and the job as parsed.

Token counts use a reference tokenizer when one loads offline (`spec.card.tokenizer`, default
the rewrite model): a local folder with a `tokenizer.json` (the `tokenizers` package) or a
name in the local Hugging Face cache (`transformers`); otherwise whitespace-separated words,
and the card says which was used.
"""

from __future__ import annotations

import importlib.metadata
import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from palimpsest.commit import OUTPUT_KIND, PART_FORMAT, read_committed, read_marker
from palimpsest.document import JobDocument
from palimpsest.identity import StageRef, pinned_tools
from palimpsest.job import Job
from palimpsest.report import ReportData, top_reasons
from palimpsest.stages.registry import STAGES
from palimpsest.storage import Store, join

CARD_NAME: Final = "README.md"
"""File name of the card under the job's output URI (the name the Hub reads)."""
LENGTH_QUANTILES: Final = (0.1, 0.5, 0.9, 0.99)


TokenCounter = Callable[[str], int]
"""Text -> its number of tokens."""


def load_tokenizer(name: str | None) -> tuple[TokenCounter, str]:
    """A token counter and how to name it: the tokenizer `name` when it loads offline, else
    whitespace-separated words."""
    if name:
        path = Path(name) / "tokenizer.json"
        try:
            if path.is_file():
                from tokenizers import Tokenizer

                fast = Tokenizer.from_file(str(path))
                return lambda text: len(fast.encode(text, add_special_tokens=False).ids), name
            from transformers import AutoTokenizer

            auto = AutoTokenizer.from_pretrained(name, local_files_only=True)
            return lambda text: len(auto.encode(text, add_special_tokens=False)), name
        except Exception:  # any failure to load means: no reference tokenizer here
            pass
    reason = f"{name!r} could not be loaded offline" if name else "none was named"
    return lambda text: len(text.split()), f"whitespace-separated words ({reason})"


@dataclass(frozen=True)
class TextSummary:
    """The final stage's kept texts: how many, their tokens and their length distribution."""

    records: int
    tokens: int
    tokenizer: str
    chars: dict[str, float]
    bytes: int


def summarize_texts(texts: Iterable[str], count: TokenCounter, tokenizer: str) -> TextSummary:
    lengths: list[int] = []
    tokens = 0
    size = 0
    for text in texts:
        lengths.append(len(text))
        tokens += count(text)
        size += len(text.encode("utf-8", "surrogatepass"))
    chars: dict[str, float] = {}
    if lengths:
        chars = {"min": min(lengths), "mean": round(statistics.fmean(lengths), 1)}
        if len(lengths) > 1:
            cuts = statistics.quantiles(lengths, n=100, method="inclusive")
            chars |= {f"p{round(q * 100)}": cuts[round(q * 100) - 1] for q in LENGTH_QUANTILES}
        chars["max"] = max(lengths)
    return TextSummary(len(lengths), tokens, tokenizer, chars, size)


def committed_parts(store: Store, output_uri: str, ref: StageRef, shards: int) -> list[str]:
    """The final stage's committed output parts, relative to the output URI."""
    prefix = output_uri.rstrip("/") + "/"
    parts = []
    for shard in range(shards):
        marker = read_marker(store, ref.uri(output_uri), shard)
        if marker is not None:
            parts += [p.uri.removeprefix(prefix) for p in marker.parts.get(OUTPUT_KIND, [])]
    return sorted(parts)


def data_files(store: Store, output_uri: str, ref: StageRef, parts: Sequence[str]) -> list[str]:
    """One glob over the stage's output parts when every part under it is committed; else
    (parts left by interrupted attempts, until `palimpsest gc --delete`) the committed parts
    one by one."""
    glob = f"{ref.stage_id}/{OUTPUT_KIND}/shard-*/*/part-*.{PART_FORMAT}"
    if not parts:
        return [glob]  # nothing kept: there may be no folder to list
    folder = join(ref.uri(output_uri), OUTPUT_KIND)
    prefix = output_uri.rstrip("/") + "/"
    present = sorted(info.uri.removeprefix(prefix) for info in store.list(folder))
    return [glob] if present == list(parts) else list(parts)


def tool_versions(kinds: Iterable[str]) -> dict[str, str]:
    tools: dict[str, str] = {"palimpsest": importlib.metadata.version("palimpsest")}
    for kind in kinds:
        tools |= pinned_tools(STAGES[kind].tools)
    return tools


def header(document: JobDocument, files: Sequence[str]) -> dict[str, Any]:
    """The card's YAML metadata."""
    card = document.job.card
    meta: dict[str, Any] = {}
    if card.license:
        meta["license"] = card.license
    if card.language:
        meta["language"] = list(card.language)
    meta["tags"] = ["palimpsest", document.job.recipe]
    meta["pretty_name"] = document.job.name
    meta["configs"] = [
        {"config_name": "default", "data_files": [{"split": "train", "path": list(files)}]}
    ]
    return meta


def render_card(
    document: JobDocument, data: ReportData, texts: TextSummary, files: Sequence[str]
) -> str:
    job = document.job
    lines = [
        "---",
        yaml.safe_dump(header(document, files), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {job.name}",
        "",
        f"Made with Palimpsest, recipe `{job.recipe}`, stages {', '.join(job.stages)}, from "
        f"`{job.input.uri}`. The `train` split is the committed output of the last stage "
        f"({texts.records} records, text in the field `{job.input.text_field}`).",
        "",
        "## Records per stage",
        "",
        "| stage | stage id | in | kept | rejected | top reject reasons |",
        "|---|---|---:|---:|---:|---|",
    ]
    for stage in data.stages:
        s = stage.stats
        reasons = ", ".join(f"{r} {n}" for r, n in top_reasons(s)) or "-"
        lines.append(
            f"| {stage.kind} | `{stage.stage_id}` | {s.records_in} | {s.kept} | {s.rejected} "
            f"| {reasons} |"
        )
    lines += [
        "",
        "## Final texts",
        "",
        f"- records: {texts.records}",
        f"- tokens: {texts.tokens} (counted with {texts.tokenizer})",
        f"- UTF-8 bytes: {texts.bytes}",
        "- characters per record: "
        + (", ".join(f"{k} {v:g}" for k, v in texts.chars.items()) or "no records"),
        "",
        "## Tool versions",
        "",
        *[f"- {name} {version}" for name, version in tool_versions(job.stages).items()],
        "",
        "## The job",
        "",
        "As parsed from the RewriteJob spec (a stage's id hashes the parts that stage reads):",
        "",
        "```yaml",
        yaml.safe_dump(json.loads(document.to_json())["job"], sort_keys=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(store: Store, document: JobDocument, shards: int, data: ReportData) -> str:
    """Write the card under the job's output URI; returns its URI."""
    job = document.job
    last = document.stage_refs()[-1]
    parts = committed_parts(store, job.output_uri, last, shards)
    count, tokenizer = load_tokenizer(tokenizer_name(job))
    texts = final_texts(store, job.output_uri, last, shards, job.input.text_field)
    summary = summarize_texts(texts, count, tokenizer)
    uri = join(job.output_uri, CARD_NAME)
    files = data_files(store, job.output_uri, last, parts)
    store.put_bytes(uri, render_card(document, data, summary, files).encode("utf-8"))
    return uri


def tokenizer_name(job: Job) -> str | None:
    """spec.card.tokenizer, else the rewrite engine's tokenizer or model, else None."""
    if job.card.tokenizer:
        return job.card.tokenizer
    if job.rewrite is None:
        return None
    return job.rewrite.engine.tokenizer or job.rewrite.engine.model


def final_texts(
    store: Store, output_uri: str, ref: StageRef, shards: int, text_field: str
) -> Iterable[str]:
    for shard in range(shards):
        marker = read_marker(store, ref.uri(output_uri), shard)
        if marker is None:
            continue
        for raw in read_committed(store, marker):
            text = (raw.record or {}).get(text_field)
            if isinstance(text, str):
                yield text
