"""The shared flags and printed lines of the vLLM benchmarks."""

from __future__ import annotations

import argparse
from types import ModuleType

import pytest

from tests.support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("vllm_bench")


RESULT = {"name": "ours", "tokens_per_second": 123.456, "generated_tokens": 640, "seconds": 5.2}


def test_a_rate_line_names_the_side_right_aligned_with_its_rate(bench: ModuleType) -> None:
    assert (
        bench.rate_line(RESULT, 8) == "    ours:    123.5 generated tokens/s (640 tokens in 5.2 s"
    )


def test_a_ratio_line_has_three_decimals_and_its_note(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    bench.print_ratio("ratio", 1.23456, "goal >= 1.3", 8)
    assert capsys.readouterr().out == "   ratio: 1.235 (goal >= 1.3)\n"


@pytest.mark.parametrize("in_flight", [True, False])
def test_engine_arguments_take_each_benchmarks_defaults(bench: ModuleType, in_flight: bool) -> None:
    parser = argparse.ArgumentParser()
    bench.add_engine_arguments(parser, max_model_len=2048, max_num_seqs=32, max_in_flight=in_flight)
    bench.add_side_arguments(parser, ("plain", "ngram"))
    args = parser.parse_args(["--max-num-seqs", "4", "--side", "ngram"])
    assert (args.model, args.max_model_len, args.max_num_seqs, args.side) == (
        None,
        2048,
        4,
        "ngram",
    )
    assert hasattr(args, "max_in_flight") == in_flight
    with pytest.raises(SystemExit):
        parser.parse_args(["--side", "other"])


def test_sides_alternate_their_order_every_round(bench: ModuleType) -> None:
    assert bench.side_orders(("a", "b", "c"), 3) == [
        ("a", "b", "c"),
        ("c", "b", "a"),
        ("a", "b", "c"),
    ]


def test_rounds_combine_into_tokens_over_seconds(bench: ModuleType) -> None:
    runs = [
        {"name": "ours", "generated_tokens": 600, "seconds": 2.0, "tokens_per_second": 300.0},
        {"name": "ours", "generated_tokens": 600, "seconds": 4.0, "tokens_per_second": 150.0},
    ]
    assert bench.combined(runs) == {
        "name": "ours",
        "generated_tokens": 1200,
        "seconds": 6.0,
        "tokens_per_second": 200.0,
        "rounds": 2,
    }
