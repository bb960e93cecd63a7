"""The shared flags and printed lines of the vLLM benchmarks."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.benchmarks import BENCHMARKS, load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    load_benchmark("machine")  # what `usage_now` imports by its name in `benchmarks/`
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


def test_rounds_combine_cpu_and_steal_when_every_round_measured_them(bench: ModuleType) -> None:
    runs = [
        {"generated_tokens": 600, "seconds": 2.0, "cpu_seconds": 3.0, "steal_seconds": 0.5},
        {"generated_tokens": 400, "seconds": 3.0, "cpu_seconds": 2.0, "steal_seconds": 0.0},
    ]
    result = bench.combined(runs)
    assert (result["cpu_seconds"], result["steal_seconds"]) == (5.0, 0.5)
    runs[1]["steal_seconds"] = None
    assert "steal_seconds" not in bench.combined(runs)


def test_a_timed_part_is_the_difference_of_two_readings(bench: ModuleType) -> None:
    start = bench.Usage(time=100.0, cpu=10.0, steal=4.0)
    end = bench.Usage(time=102.5, cpu=14.25, steal=4.75)
    assert bench.timed_part(start, end) == {
        "begun": 100.0,
        "ended": 102.5,
        "seconds": 2.5,
        "cpu_seconds": 4.25,
        "steal_seconds": 0.75,
    }
    assert bench.timed_part(dataclasses.replace(start, steal=None), end)["steal_seconds"] is None


def test_usage_counts_the_cpu_of_a_live_child_process(bench: ModuleType) -> None:
    """vLLM's engine core is a child of the side's process: its CPU must count."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.4\n"
            "while time.process_time() < end: pass\ntime.sleep(30)",
        ]
    )
    try:
        start = bench.usage_now()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            used = bench.timed_part(start, bench.usage_now())["cpu_seconds"]
            if used >= 0.3:
                break
            time.sleep(0.05)
        assert used >= 0.3
    finally:
        child.kill()
        child.wait()


SERVED = """
import asyncio, sys
sys.path.insert(0, {benchmarks!r})
from vllm_bench import serve_side

class Counting:
    cold_start = 1.54

    def __init__(self):
        self.runs = 0

    async def run(self, folder):
        self.runs += 1
        (folder / "ran").write_text(str(self.runs))
        return {{"run": self.runs}}

    async def close(self):
        print("closed after", self.runs, file=sys.stderr)

print("an engine's log line on stdout")
asyncio.run(serve_side(Counting()))
"""


def served_side(
    bench: ModuleType, tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    script = tmp_path / "side.py"
    script.write_text(source)
    monkeypatch.setattr(sys, "argv", [str(script)])
    return bench.ServedSide(str(script), "counting", "model", "in", tmp_path, dict(os.environ))


def test_a_served_side_runs_its_part_each_time_it_is_told(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = served_side(bench, tmp_path, SERVED.format(benchmarks=str(BENCHMARKS)), monkeypatch)
    try:
        assert side.ready() == {"ready": True, "cold_start_seconds": 1.5}
        assert side.run(tmp_path / "round-1") == {"run": 1}
        assert side.run(tmp_path / "round-2") == {"run": 2}
        assert (tmp_path / "round-2" / "ran").read_text() == "2"
        assert side.cpu_seconds() > 0
    finally:
        side.stop()
    assert side.process.returncode == 0
    assert "closed after 2" in side.log_path.read_text()


def test_a_side_that_dies_stops_the_benchmark_with_its_log(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = "import sys\nprint('engine failed to start', file=sys.stderr)\nsys.exit(3)\n"
    side = served_side(bench, tmp_path, source, monkeypatch)
    with pytest.raises(SystemExit, match=r"(?s)engine failed to start.*counting side failed"):
        side.ready()
    side.stop()


def test_step_cost_recovers_the_cost_per_step_and_per_running_request(bench: ModuleType) -> None:
    runs = {
        side: [
            {
                "batch": {"steps": steps, "running": running},
                "seconds": 0.002 * steps + 0.0003 * running,
            }
            for _ in range(2)
        ]
        for side, steps, running in (("published", 4640, 51523), ("ours", 3566, 51523))
    }
    per_step, per_request = bench.step_cost(runs)
    assert per_step == pytest.approx(0.002)
    assert per_request == pytest.approx(0.0003)
    runs["ours"] = runs["published"]
    assert bench.step_cost(runs) is None


def test_step_cost_refuses_a_fit_with_a_part_below_zero(bench: ModuleType) -> None:
    # Fuller steps that took longer than emptier ones fit a negative cost per step.
    runs = {
        "published": [{"batch": {"steps": 678, "running": 4841}, "seconds": 3.0}],
        "ours": [{"batch": {"steps": 474, "running": 4841}, "seconds": 3.2}],
    }
    assert bench.step_cost(runs) is None


def test_full_batch_ceiling_is_what_full_steps_would_save(bench: ModuleType) -> None:
    runs = [
        {"batch": {"steps": 1000, "running": 8000}},
        {"batch": {"steps": 1000, "running": 8000}},
    ]
    # As run: 2000 steps of 8 requests; full: 1000 steps of 16, at 2 ms + 0.25 ms per request.
    ceiling = bench.full_batch_ceiling((0.002, 0.00025), runs, 16)
    assert ceiling == pytest.approx(
        (2000 * 0.002 + 16000 * 0.00025) / (1000 * 0.002 + 16000 * 0.00025)
    )
    full = [{"batch": {"steps": 1000, "running": 16000}}]
    assert bench.full_batch_ceiling((0.002, 0.00025), full, 16) == pytest.approx(1.0)
