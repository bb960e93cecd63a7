"""What a finished (or partly finished) job did, from its markers: a summary and an HTML report.

Local mode ends by telling the user what happened without making them read JSON markers: per
stage, records in/kept/rejected, the top reject reasons, tokens and throughput (the same sums
the operator writes into status), and a small self-contained HTML page next to the outputs
with the pylint score histogram (and its threshold) and the token lengths before and after
each rewrite stage. Everything comes from markers and the records they list, so a report of a
re-run is the same as the report of the run that did the work.

Plots need matplotlib (the `analyze` extra); it is imported only when a report is drawn, and
without it the page still carries the summary table and says how to get the plots.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple

from palimpsest.commit import REJECTS_KIND, read_committed, read_marker
from palimpsest.identity import StageRef
from palimpsest.inspection import JobView, Sample, seeded_samples, stage_records
from palimpsest.lint.scoring import score_text
from palimpsest.recordfields import DETAIL_FIELD, META_FIELD, SCORE_FIELD, SCORE_MAX_FIELD
from palimpsest.records import Record
from palimpsest.stats import SCORE_BUCKET, Stats
from palimpsest.storage import Store

REPORT_NAME: Final = "report.html"
"""File name of the report under the job's output URI."""
SUMMARY_NAME: Final = "summary.json"
"""File name of the summary (the per-stage sums, as JSON) under the job's output URI."""
TOP_REASONS: Final = 5
"""Reject reasons listed per stage in the summary; the rest are summed as 'other'."""
MAX_RECORDS_PER_STAGE: Final = 50_000
"""Records read per stage for the token length plots: enough for a smooth histogram of a
local run, small enough that a report of a big S3 run stays quick."""
HISTOGRAM_BINS: Final = 30
SAMPLES_PER_STAGE: Final = 4
"""Records shown before/after per rewrite stage (a seeded choice, see `inspection`)."""
SAMPLE_SEED: Final = 0
"""Seed of that choice: the same records on every report of the same output."""
REASONS_WITH_EXAMPLES: Final = 3
"""Reject reasons per stage shown with examples (the most frequent ones)."""
EXAMPLES_PER_REASON: Final = 2
EXCERPT_LINES: Final = 12
"""Lines of a rejected record's text shown as its excerpt (the head, or the tail when the
answer was cut short)."""


@dataclass(frozen=True)
class StageSummary:
    """One stage's sums over its committed shards."""

    kind: str
    stage_id: str
    shards: int
    committed: int
    stats: Stats

    @property
    def records_per_second(self) -> float:
        return self.stats.records_in / self.stats.seconds if self.stats.seconds > 0 else 0.0

    @property
    def generated_per_second(self) -> float:
        return self.stats.generated_tokens / self.stats.seconds if self.stats.seconds > 0 else 0.0


@dataclass(frozen=True)
class TokenLengths:
    """Per-record token counts of one rewrite stage, as the engine counted them: the prompt
    (the record's text inside the stage's instructions) and the generated answer."""

    kind: str
    prompt: tuple[int, ...]
    generated: tuple[int, ...]


class RejectExamples(NamedTuple):
    """A few rejects of one stage with one reason, and how many there were in all."""

    kind: str
    reason: str
    total: int
    examples: tuple[Sample, ...]


@dataclass(frozen=True)
class ReportData:
    job_name: str
    recipe: str
    output_uri: str
    stages: tuple[StageSummary, ...]
    min_score: float | None = None
    """The filter's threshold (None: the job has no filter stage)."""
    token_lengths: tuple[TokenLengths, ...] = field(default=())
    samples: tuple[Sample, ...] = field(default=())
    """Rewrite stages' records, before and after (empty without the job's document)."""
    reject_examples: tuple[RejectExamples, ...] = field(default=())
    bounded_scores: tuple[float, ...] = field(default=())
    """Rejects whose linting stopped early: the best score each could still have reached."""
    text_field: str = "text"

    @property
    def scores(self) -> Counter[str]:
        """The filter's pylint score histogram: bucket lower edge -> records."""
        total: Counter[str] = Counter()
        for stage in self.stages:
            if stage.kind == "filter":
                total.update(stage.stats.scores)
        return total


# --- gathering ------------------------------------------------------------------------------


def stage_summary(store: Store, output_uri: str, ref: StageRef, shards: int) -> StageSummary:
    """The sums of a stage's committed markers (uncommitted shards count nothing)."""
    stats = Stats()
    committed = 0
    for shard in range(shards):
        marker = read_marker(store, ref.uri(output_uri), shard)
        if marker is not None:
            committed += 1
            stats.merge(marker.stats)
    return StageSummary(ref.kind, ref.stage_id, shards, committed, stats)


def token_lengths(store: Store, output_uri: str, ref: StageRef, shards: int) -> TokenLengths:
    """Token counts from the stage's metadata in its committed outputs and rejects."""
    prompt: list[int] = []
    generated: list[int] = []
    for shard in range(shards):
        if len(prompt) >= MAX_RECORDS_PER_STAGE:
            break
        marker = read_marker(store, ref.uri(output_uri), shard)
        if marker is None:
            continue
        for kind in ("output", REJECTS_KIND):
            for raw in read_committed(store, marker, kind):
                counts = _stage_tokens(raw.record, ref.kind)
                if counts is not None:
                    prompt.append(counts[0])
                    generated.append(counts[1])
    return TokenLengths(ref.kind, tuple(prompt), tuple(generated))


def _stage_tokens(record: Record | None, kind: str) -> tuple[int, int] | None:
    meta = (record or {}).get(META_FIELD)
    stage = meta.get(kind) if isinstance(meta, dict) else None
    if not isinstance(stage, dict) or not stage.get("prompt_tokens"):
        return None  # no request served: rejected before it (empty text) or by the engine
    return int(stage["prompt_tokens"]), int(stage.get("generated_tokens", 0))


def collect(
    store: Store,
    output_uri: str,
    refs: Sequence[StageRef],
    shards: int,
    *,
    job_name: str,
    recipe: str,
    min_score: float | None,
    view: JobView | None = None,
) -> ReportData:
    """Everything the summary and the report show, read from the stages' markers; with the
    job's `view`, also sample records of each stage (a bounded read)."""
    stages = tuple(stage_summary(store, output_uri, ref, shards) for ref in refs)
    data = ReportData(
        job_name=job_name,
        recipe=recipe,
        output_uri=output_uri,
        stages=stages,
        min_score=min_score,
        token_lengths=tuple(
            token_lengths(store, output_uri, ref, shards) for ref in refs if ref.kind != "filter"
        ),
    )
    if view is None:
        return data
    return replace(
        data,
        samples=tuple(
            sample
            for ref in refs
            if ref.kind != "filter"
            for sample in seeded_samples(store, view, ref.kind, SAMPLES_PER_STAGE, seed=SAMPLE_SEED)
        ),
        reject_examples=tuple(reject_examples(store, view, stages)),
        bounded_scores=bounded_scores(store, view) if min_score is not None else (),
        text_field=view.text_field,
    )


def reject_examples(
    store: Store, view: JobView, stages: Sequence[StageSummary]
) -> list[RejectExamples]:
    """Examples of each stage's most frequent reject reasons."""
    found = []
    for stage in stages:
        for reason, count in top_reasons(stage.stats, REASONS_WITH_EXAMPLES):
            if reason == "other":
                continue
            examples = seeded_samples(
                store, view, stage.kind, EXAMPLES_PER_REASON, seed=SAMPLE_SEED, reason=reason
            )
            found.append(RejectExamples(stage.kind, reason, count, tuple(examples)))
    return found


def bounded_scores(store: Store, view: JobView) -> tuple[float, ...]:
    """The score bounds of the filter's rejects that stopped linting early (bounded read)."""
    bounds: list[float] = []
    for _, record in stage_records(store, view, view.ref("filter"), REJECTS_KIND):
        if record.get(SCORE_MAX_FIELD) is not None:
            bounds.append(float(record[SCORE_MAX_FIELD]))
            if len(bounds) >= MAX_RECORDS_PER_STAGE:
                break
    return tuple(bounds)


# --- summary --------------------------------------------------------------------------------


def top_reasons(stats: Stats, limit: int = TOP_REASONS) -> list[tuple[str, int]]:
    """The most frequent reject reasons, with the rest summed as 'other'."""
    ranked = sorted(stats.rejects.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ranked[:limit]
    rest = sum(count for _, count in ranked[limit:])
    return [*top, ("other", rest)] if rest else top


def summary_rows(data: ReportData) -> list[dict[str, Any]]:
    """One row per stage: the numbers both the printed summary and the page show."""
    rows = []
    for stage in data.stages:
        s = stage.stats
        rows.append(
            {
                "stage": stage.kind,
                "stage_id": stage.stage_id,
                "shards": f"{stage.committed}/{stage.shards}",
                "in": s.records_in,
                "kept": s.kept,
                "rejected": s.rejected,
                "top_rejects": top_reasons(s),
                "prompt_tokens": s.prompt_tokens,
                "generated_tokens": s.generated_tokens,
                "seconds": round(s.seconds, 1),
                "records_per_s": round(stage.records_per_second, 2),
                "generated_tokens_per_s": round(stage.generated_per_second, 1),
            }
        )
    return rows


def summary_text(data: ReportData) -> str:
    """The summary as plain text for a terminal."""
    lines = [f"RewriteJob {data.job_name} ({data.recipe}) -> {data.output_uri}"]
    for row in summary_rows(data):
        lines.append(
            f"  {row['stage']:<9} shards {row['shards']:>7}  in {row['in']:>6}  "
            f"kept {row['kept']:>6}  rejected {row['rejected']:>6}  "
            f"{row['seconds']:>8.1f} s  {row['records_per_s']:>7.2f} rec/s"
        )
        if row["prompt_tokens"] or row["generated_tokens"]:
            lines.append(
                f"  {'':<9} tokens: {row['prompt_tokens']} prompt, {row['generated_tokens']} "
                f"generated ({row['generated_tokens_per_s']:.1f} generated/s)"
            )
        if row["top_rejects"]:
            reasons = ", ".join(f"{reason} {count}" for reason, count in row["top_rejects"])
            lines.append(f"  {'':<9} rejects: {reasons}")
    return "\n".join(lines)


def summary_json(data: ReportData) -> dict[str, Any]:
    return {
        "job": data.job_name,
        "recipe": data.recipe,
        "output": data.output_uri,
        "stages": {
            stage.kind: {
                "stage_id": stage.stage_id,
                "shards": stage.shards,
                "committed": stage.committed,
                **stage.stats.to_dict(),
            }
            for stage in data.stages
        },
    }


# --- the page -------------------------------------------------------------------------------


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML page (plots are embedded PNGs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>Palimpsest report: {html.escape(data.job_name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:72em}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em;"
        "text-align:right}th{background:#eee}td.l{text-align:left}"
        "table.diff{font-family:monospace;font-size:85%;width:100%}table.diff td{text-align:left;"
        "vertical-align:top;border:none}.diff_add{background:#aaffaa}.diff_chg{background:#ffff77}"
        ".diff_sub{background:#ffaaaa}.diff_header{background:#e0e0e0}.diff_next{display:none}"
        "pre{background:#f6f6f6;padding:.5em;overflow-x:auto}</style>",
        "</head><body>",
        f"<h1>RewriteJob {html.escape(data.job_name)}</h1>",
        f"<p>Recipe <b>{html.escape(data.recipe)}</b>, output "
        f"<code>{html.escape(data.output_uri)}</code>.</p>",
        "<h2>Stages</h2>",
        _table_html(data),
    ]
    plots = _plots_html(data)
    parts += plots
    parts += _samples_html(data)
    parts += _rejects_html(data)
    parts.append("</body></html>")
    return "\n".join(parts)


def _samples_html(data: ReportData) -> list[str]:
    """Each rewrite stage's sampled records, before and after side by side, with a diff."""
    parts = []
    for kind in dict.fromkeys(sample.stage for sample in data.samples):
        parts.append(f'<section class="samples" id="samples-{html.escape(kind)}">')
        parts.append(f"<h2>Samples: {html.escape(kind)}</h2>")
        parts.append(
            f"<p>{SAMPLES_PER_STAGE} records kept by the stage (a seeded choice): the text "
            "it read (left) and wrote (right); changed lines are highlighted.</p>"
        )
        for sample in (s for s in data.samples if s.stage == kind):
            parts.append(_sample_html(sample, data.text_field))
        parts.append("</section>")
    return parts


def _sample_html(sample: Sample, text_field: str) -> str:
    before = str((sample.before or {}).get(text_field, ""))
    after = str(sample.after.get(text_field, ""))
    table = difflib.HtmlDiff(tabsize=4, wrapcolumn=80).make_table(
        before.splitlines(), after.splitlines(), "before", "after"
    )
    return (
        f'<div class="sample"><h3>{html.escape(sample.key)} '
        f'<small>shard {sample.shard}</small></h3><p class="meta">'
        f"{html.escape(_stage_meta_text(sample))}</p>{table}</div>"
    )


def _stage_meta_text(sample: Sample) -> str:
    meta = sample.after.get(META_FIELD)
    stage = meta.get(sample.stage) if isinstance(meta, dict) else None
    if not isinstance(stage, dict):
        return ""
    parts = [
        f"prompt tokens {stage.get('prompt_tokens', '?')}",
        f"generated tokens {stage.get('generated_tokens', '?')}",
    ]
    if stage.get("score") is not None:
        parts.append(f"model score {stage['score']}")
    return ", ".join(parts)


def _rejects_html(data: ReportData) -> list[str]:
    """Two examples of each stage's most frequent reject reasons, with an excerpt."""
    if not data.reject_examples:
        return []
    parts = ['<section id="rejects"><h2>Reject examples</h2>']
    for group in data.reject_examples:
        parts.append(
            f"<h3>{html.escape(group.kind)}: {html.escape(group.reason)} "
            f"<small>({group.total} rejected)</small></h3>"
        )
        for sample in group.examples:
            parts.append(
                f'<div class="reject-example"><p><b>{html.escape(sample.key)}</b> '
                f"{html.escape(_reject_facts(sample))}</p>"
                f"<pre>{html.escape(_excerpt(sample, data.text_field))}</pre></div>"
            )
    parts.append("</section>")
    return parts


def _reject_facts(sample: Sample) -> str:
    record = sample.after
    facts = [f"rejected by {sample.stage}: {sample.reason}"]
    if record.get(DETAIL_FIELD):
        facts.append(str(record[DETAIL_FIELD]))
    if record.get(SCORE_FIELD) is not None:
        facts.append(f"pylint score {score_text(record[SCORE_FIELD])}")
    if record.get(SCORE_MAX_FIELD) is not None:
        bound = score_text(record[SCORE_MAX_FIELD])
        facts.append(f"pylint score at most {bound} (linting stopped early)")
    meta = _stage_meta_text(sample)
    return "; ".join([*facts, meta] if meta else facts)


def _excerpt(sample: Sample, text_field: str) -> str:
    """The lines that matter: the tail of an answer cut short, else the head."""
    lines = str(sample.after.get(text_field, "")).splitlines()
    if len(lines) <= EXCERPT_LINES:
        return "\n".join(lines)
    if sample.reason == "truncated":
        return "\n".join(["...", *lines[-EXCERPT_LINES:]])
    return "\n".join([*lines[:EXCERPT_LINES], "..."])


def _table_html(data: ReportData) -> str:
    head = (
        "<tr><th>stage</th><th>shards</th><th>in</th><th>kept</th><th>rejected</th>"
        "<th>top reject reasons</th><th>prompt tokens</th><th>generated tokens</th>"
        "<th>seconds</th><th>records/s</th><th>generated tokens/s</th></tr>"
    )
    rows = []
    for row in summary_rows(data):
        reasons = "<br>".join(
            f"{html.escape(reason)}: {count}" for reason, count in row["top_rejects"]
        )
        rows.append(
            f'<tr><td class="l" title="{html.escape(row["stage_id"])}">{row["stage"]}</td>'
            f"<td>{row['shards']}</td><td>{row['in']}</td><td>{row['kept']}</td>"
            f'<td>{row["rejected"]}</td><td class="l">{reasons}</td>'
            f"<td>{row['prompt_tokens']}</td><td>{row['generated_tokens']}</td>"
            f"<td>{row['seconds']}</td><td>{row['records_per_s']}</td>"
            f"<td>{row['generated_tokens_per_s']}</td></tr>"
        )
    return f'<table id="summary">{head}{"".join(rows)}</table>'


def _plots_html(data: ReportData) -> list[str]:
    wanted = data.min_score is not None or any(t.prompt for t in data.token_lengths)
    if not wanted:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return [
            "<p>Plots need matplotlib: <code>pip install 'palimpsest[analyze]'</code>, "
            "then run the job again (committed stages are not redone).</p>"
        ]
    parts = []
    if data.min_score is not None:
        parts += [
            "<h2>Pylint scores</h2>",
            f'<p id="threshold">Threshold: {data.min_score:g} (kept at or above it). '
            "Scores are penalised for comments. Samples whose linting stopped early, once "
            "they could no longer pass, are drawn at the best score they could still reach "
            f"({len(data.bounded_scores)} rejected records).</p>",
            _img(
                _score_figure(data.scores, data.min_score, data.bounded_scores),
                "pylint score histogram",
            ),
        ]
    for lengths in data.token_lengths:
        if lengths.prompt:
            parts += [
                f"<h2>Token lengths: {html.escape(lengths.kind)}</h2>",
                f"<p>{len(lengths.prompt)} requests: prompt tokens (the text before "
                f"rewriting, inside the stage's instructions) and generated tokens (after).</p>",
                _img(_lengths_figure(lengths), f"{lengths.kind} token lengths"),
                _img(_scatter_figure(lengths), f"{lengths.kind} length before and after"),
            ]
    return parts


def _score_figure(scores: Counter[str], threshold: float, bounds: Sequence[float] = ()) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3.5))
    edges = sorted(scores, key=float)
    ax.bar(
        [float(e) for e in edges],
        [scores[e] for e in edges],
        width=SCORE_BUCKET,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="scored (kept and rejected)",
    )
    if bounds:
        ax.hist(
            bounds,
            bins=[i * SCORE_BUCKET for i in range(int(10 / SCORE_BUCKET) + 1)],
            color="#dd8452",
            alpha=0.7,
            label="rejected early: score at most",
        )
    ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlim(0, 10)
    ax.set_xlabel("penalised pylint score")
    ax.set_ylabel("records")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    return fig


def _lengths_figure(lengths: TokenLengths) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3.5))
    top = max([*lengths.prompt, *lengths.generated, 1])
    bins = [top * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    ax.hist(lengths.prompt, bins=bins, alpha=0.6, label="before: prompt tokens")
    ax.hist(lengths.generated, bins=bins, alpha=0.6, label="after: generated tokens")
    ax.set_xlabel("tokens per record")
    ax.set_ylabel("records")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    return fig


def _scatter_figure(lengths: TokenLengths) -> Any:
    """Each record's length after (generated tokens) against before (prompt tokens)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(lengths.prompt, lengths.generated, s=12, alpha=0.6, color="#55a868")
    top = max([*lengths.prompt, *lengths.generated, 1])
    ax.plot([0, top], [0, top], color="#888", linestyle=":", label="same length")
    ax.set_xlabel("before: prompt tokens")
    ax.set_ylabel("after: generated tokens")
    ax.legend()
    fig.tight_layout()
    return fig


def _img(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'
