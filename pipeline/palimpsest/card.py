"""The dataset card: a `README.md` in the Hugging Face dataset-card format next to a job's outputs.

A finished job's output folder is a dataset someone will publish or load; the card says what
it holds and how it was made, from the markers alone (so a re-run writes the same card): a YAML
header whose `configs` point `data_files` at the final stage's committed parts (so
`datasets.load_dataset(OUTPUT)` reads exactly them), license and language from `spec.card`,
then records in/kept/rejected per stage with the top reject reasons, token counts and length
distribution of the final texts, the stage ids, the pinned tool versions and the job as parsed.

The final texts' figures are not read from the records here: the worker that committed each
shard of the final stage counted them into its marker (`cardstats`), and the card sums those
(`cardstats.merge`), so `palimpsest run` and the operator write the same card. Token counts
use a reference tokenizer when one loads offline on the worker (`spec.card.tokenizer`,
default the rewrite model), otherwise whitespace-separated words, and the card says which.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

import yaml

from palimpsest.cardstats import MIXED, CardStats, LengthSketch, describer, merge
from palimpsest.commit import OUTPUT_FORMATS, OUTPUT_KIND, Marker, read_marker
from palimpsest.document import JobDocument
from palimpsest.identity import StageRef, pinned_tools
from palimpsest.job import Job
from palimpsest.report import ReportData, top_reasons
from palimpsest.stages.registry import STAGES
from palimpsest.storage import Store, join

CARD_NAME: Final = "README.md"
"""File name of the card under the job's output URI (the name the Hub reads)."""
LENGTH_QUANTILES: Final = (0.1, 0.5, 0.9, 0.99)


def shard_card(store: Store, marker: Marker, job: Job) -> CardStats:
    """A committed shard's card statistics: from its marker, or (a marker written while the
    stage was not a job's final one, or before markers carried them) counted from its parts."""
    if marker.card is not None:
        return CardStats.from_dict(marker.card)
    return CardStats.from_dict(describer(store, job)(marker.parts.get(OUTPUT_KIND, [])))


def final_stage(store: Store, job: Job, ref: StageRef, shards: int) -> tuple[list[str], CardStats]:
    """The final stage's committed output parts (relative to the output URI) and the sum of
    its shards' card statistics, in one pass over its markers."""
    prefix = job.output_uri.rstrip("/") + "/"
    parts: list[str] = []
    total = CardStats()
    for shard in range(shards):
        marker = read_marker(store, ref.uri(job.output_uri), shard)
        if marker is not None:
            parts += [p.uri.removeprefix(prefix) for p in marker.parts.get(OUTPUT_KIND, [])]
            merge(total, shard_card(store, marker, job))
    return sorted(parts), total


def stage_glob(ref: StageRef, output_format: str) -> str:
    """The glob over every output part of the final stage `ref` (`spec.output.format`)."""
    return f"{ref.stage_id}/{OUTPUT_KIND}/shard-*/*/part-*.{OUTPUT_FORMATS[output_format]}"


def data_files(
    store: Store, output_uri: str, ref: StageRef, parts: Sequence[str], job_format: str = "jsonl"
) -> list[str]:
    """One glob over the stage's output parts when every part under it is committed; else
    (parts left by interrupted attempts, until `palimpsest gc --delete`) the committed parts
    one by one."""
    glob = stage_glob(ref, job_format)
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
    document: JobDocument,
    data: ReportData,
    texts: CardStats,
    files: Sequence[str],
    strays: int = 0,
) -> str:
    """The card's text; `strays`: objects beside the final stage's committed parts."""
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
        *stray_note(strays, files),
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
        f"- tokens: {texts.tokens} (counted with {tokenizer_label(texts.tokenizer)})",
        f"- UTF-8 bytes: {texts.bytes}",
        f"- characters per record: {spread(texts.chars)}",
        f"- tokens per record: {spread(texts.token_lengths)}",
        "",
        "Percentiles come from log-scale histograms summed over shards (within 2.2%).",
        *uncounted(texts),
        "",
        *distribution(texts.chars),
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


def spread(sketch: LengthSketch) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sketch.summary(LENGTH_QUANTILES).items()) or (
        "no records"
    )


def distribution(sketch: LengthSketch) -> list[str]:
    """The characters-per-record histogram as a table, one row per doubling."""
    if not sketch.count:
        return []
    rows = [f"| {low} - {high - 1} | {n} |" for low, high, n in sketch.doublings()]
    return ["| characters per record | records |", "|---|---:|", *rows, ""]


def stray_note(strays: int, files: Sequence[str]) -> list[str]:
    if strays <= 0:
        return []
    named = len(files) > 1 or "*" not in files[0]
    how = "so `data_files` names the committed parts" if named else "which its glob matches too"
    return [
        "",
        f"{strays} objects beside the committed parts are left from attempts that did not "
        f"commit ({how}); `palimpsest gc --delete` removes them.",
    ]


def uncounted(texts: CardStats) -> list[str]:
    if not texts.uncounted:
        return []
    return [
        f"{texts.uncounted} shards are not in these figures: their markers carry no card "
        "statistics (`palimpsest run` over the same job counts them from their records)."
    ]


def tokenizer_label(name: str | None) -> str:
    if name == MIXED:
        return "different tokenizers on different workers (see the job's tokenizer setting)"
    return name or "nothing (no records)"


def write_card(store: Store, document: JobDocument, shards: int, data: ReportData) -> str:
    """Write the card under the job's output URI; returns its URI."""
    job = document.job
    last = document.stage_refs()[-1]
    parts, texts = final_stage(store, job, last, shards)
    uri = join(job.output_uri, CARD_NAME)
    files = data_files(store, job.output_uri, last, parts, job.output_format)
    store.put_bytes(uri, render_card(document, data, texts, files).encode("utf-8"))
    return uri
