"""Tests for `palimpsest analyze`: published figures, independent re-computation, hostile input.

The real table is shared/data/swallow-leaderboard-2024.csv, beside the repository.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from palimpsest import analysis, cli

LEADERBOARD = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "swallow-leaderboard-2024.csv"
)
BASE = [("type", "base")]


@pytest.fixture(scope="module")
def leaderboard() -> Path:
    if not LEADERBOARD.is_file():
        pytest.fail(f"{LEADERBOARD} is missing: shared/data must sit beside the repository")
    return LEADERBOARD


@pytest.fixture(scope="module")
def base_rows(leaderboard: Path) -> list[dict[str, str]]:
    with leaderboard.open(newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["type"] == "base"]


@pytest.fixture(scope="module")
def base_table(leaderboard: Path) -> analysis.ScoreTable:
    return analysis.load_table(leaderboard, BASE, ["size_b"])


@pytest.fixture(scope="module")
def base_pca(base_table: analysis.ScoreTable) -> analysis.PCAResult:
    return analysis.pca(base_table.scores)


# --- test-data builders ----------------------------------------------------------------------


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def small_rows(n: int = 6) -> list[list[object]]:
    """n models with a name, a size and three benchmarks that are correlated but not collinear."""
    return [[f"org/m{i}", 1 + i, 0.1 * i, 0.05 * i * i, (i * 7) % 5 / 10] for i in range(n)]


SMALL_HEADER = ["model", "size_b", "A", "B", "C"]


def small_csv(tmp_path: Path, rows: list[list[object]] | None = None) -> Path:
    return write_csv(tmp_path / "scores.csv", SMALL_HEADER, small_rows() if rows is None else rows)


def hand_pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    # Build the parser from this command alone, so the test does not depend on other commands.
    monkeypatch.setattr(cli, "COMMANDS", {"analyze": cli.COMMANDS["analyze"]})
    return cli.main(["analyze", *argv])


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


# --- the published figures -------------------------------------------------------------------


def test_base_models_are_selected(base_table: analysis.ScoreTable) -> None:
    assert len(base_table.names) == 63
    assert len(base_table.benchmarks) == 19
    assert base_table.label_columns == ("model", "type", "size_b")
    assert set(base_table.label("type")) == {"base"}
    assert base_table.rows_read == 123
    assert base_table.dropped_rows == ()
    assert base_table.dropped_columns == ()


def test_explained_variance_matches_published(base_pca: analysis.PCAResult) -> None:
    ratios = [round(float(v), 3) for v in base_pca.explained_variance_ratio[:3]]
    assert ratios == [0.683, 0.136, 0.065]


def test_correlations_match_published(base_table: analysis.ScoreTable) -> None:
    r = analysis.pearson_matrix(base_table.scores)
    index = base_table.benchmarks.index
    assert round(float(r[index("MMLU"), index("JMMLU")]), 2) == 0.90
    assert round(float(r[index("HumanEval"), index("JHumanEval")]), 2) == 0.97


def test_second_component_reads_as_japanese_ability(
    base_table: analysis.ScoreTable, base_pca: analysis.PCAResult
) -> None:
    leaders = analysis.top_loadings(base_table.benchmarks, base_pca.loadings[:, 1], 3)
    assert {name for name, _ in leaders} == {"NIILC", "WMT20 (en-ja)", "JEMHopQA"}
    assert all(value > 0 for _, value in leaders)


# --- independent re-computation --------------------------------------------------------------


def test_correlations_equal_hand_written_pearson(
    base_rows: list[dict[str, str]], base_table: analysis.ScoreTable
) -> None:
    r = analysis.pearson_matrix(base_table.scores)
    for i, a in enumerate(base_table.benchmarks):
        for j, b in enumerate(base_table.benchmarks):
            expected = hand_pearson(
                [float(row[a]) for row in base_rows], [float(row[b]) for row in base_rows]
            )
            assert r[i, j] == pytest.approx(expected, abs=1e-12)


def svd_reference(x: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratios, correlation loadings and scores by SVD, oriented by the documented convention."""
    z = (x - x.mean(axis=0)) / x.std(axis=0, ddof=ddof)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    for k in range(vt.shape[0]):
        pivot = np.argmax(np.abs(vt[k]))
        if vt[k, pivot] < 0:
            vt[k] *= -1
            u[:, k] *= -1
    ratios = s**2 / np.sum(s**2)
    loadings = vt.T * s / math.sqrt(x.shape[0] - ddof)
    return ratios, loadings, u * s


def test_pca_equals_svd_of_standardized_matrix(
    base_table: analysis.ScoreTable, base_pca: analysis.PCAResult
) -> None:
    ratios, loadings, scores = svd_reference(np.array(base_table.scores), ddof=0)
    np.testing.assert_allclose(base_pca.explained_variance_ratio, ratios, atol=1e-10)
    np.testing.assert_allclose(base_pca.loadings, loadings, atol=1e-8)
    np.testing.assert_allclose(base_pca.scores, scores, atol=1e-8)


def test_sample_standard_deviation_changes_neither_ratios_nor_loadings(
    base_table: analysis.ScoreTable, base_pca: analysis.PCAResult
) -> None:
    ratios, loadings, scores = svd_reference(np.array(base_table.scores), ddof=1)
    n = len(base_table.names)
    np.testing.assert_allclose(base_pca.explained_variance_ratio, ratios, atol=1e-10)
    np.testing.assert_allclose(base_pca.loadings, loadings, atol=1e-8)
    np.testing.assert_allclose(base_pca.scores * math.sqrt((n - 1) / n), scores, atol=1e-8)


def test_loadings_are_correlations_with_the_scores(
    base_table: analysis.ScoreTable, base_pca: analysis.PCAResult
) -> None:
    for j in range(len(base_table.benchmarks)):
        for k in range(3):
            r = hand_pearson(list(base_table.scores[:, j]), list(base_pca.scores[:, k]))
            assert base_pca.loadings[j, k] == pytest.approx(r, abs=1e-9)
    np.testing.assert_allclose(base_pca.scores.var(axis=0), base_pca.eigenvalues, rtol=1e-9)


def test_sign_convention(base_pca: analysis.PCAResult) -> None:
    for k in range(base_pca.n_components):
        column = base_pca.loadings[:, k]
        assert column[np.argmax(np.abs(column))] > 0
    assert (base_pca.loadings[:, 0] > 0).all()


def test_sign_convention_is_independent_of_input_sign() -> None:
    vectors = np.array([[0.6, -0.1], [-0.8, 0.2], [0.0, -0.9]])
    oriented = analysis.orient(vectors)
    np.testing.assert_array_equal(oriented, analysis.orient(-vectors))
    np.testing.assert_array_equal(oriented[:, 0], [-0.6, 0.8, 0.0])
    np.testing.assert_array_equal(oriented[:, 1], [0.1, -0.2, 0.9])


def test_sign_convention_breaks_ties_by_column_order() -> None:
    tied = np.array([[-(0.5**0.5) + 1e-15], [0.5**0.5]])
    np.testing.assert_array_equal(analysis.orient(tied)[:, 0] > 0, [True, False])
    np.testing.assert_array_equal(analysis.orient(-tied)[:, 0] > 0, [True, False])


def test_components_stop_at_rows_minus_one(tmp_path: Path) -> None:
    table = analysis.load_table(small_csv(tmp_path, small_rows(3)), label_columns=["size_b"])
    result = analysis.pca(table.scores)
    assert result.n_components == 2
    assert math.fsum(result.explained_variance_ratio) == pytest.approx(1.0)


def test_table_is_frozen(base_table: analysis.ScoreTable) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        base_table.names = ()  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        base_table.scores[0, 0] = 1.0


# --- end to end ------------------------------------------------------------------------------


def test_cli_writes_every_output(
    leaderboard: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    argv = [
        str(leaderboard),
        "--out",
        str(out),
        "--where",
        "type=base",
        "--label-columns",
        "size_b",
    ]
    assert run_cli(argv, monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "63 with type=base" in printed
    assert "Missing values: none." in printed
    assert "PC1: 0.683 of variance" in printed
    assert "PC2: 0.136 of variance (cumulative 0.819); top loadings: NIILC" in printed
    assert (out / "summary.txt").read_text(encoding="utf-8") in printed

    benchmarks = read_csv(leaderboard)[0][3:]
    components = [f"PC{k}" for k in range(1, 20)]
    header, rows = read_csv(out / "correlations.csv")
    assert header == ["benchmark", *benchmarks]
    assert [row[0] for row in rows] == benchmarks
    mmlu, jmmlu = benchmarks.index("MMLU"), benchmarks.index("JMMLU")
    assert round(float(rows[mmlu][1 + jmmlu]), 2) == 0.90

    header, rows = read_csv(out / "pca_explained_variance.csv")
    assert header == ["component", "explained_variance_ratio"]
    assert [row[0] for row in rows] == components
    assert [round(float(row[1]), 3) for row in rows[:3]] == [0.683, 0.136, 0.065]

    header, rows = read_csv(out / "pca_loadings.csv")
    assert header == ["benchmark", *components]
    assert [row[0] for row in rows] == benchmarks

    header, rows = read_csv(out / "pca_scores.csv")
    assert header == ["model", "type", "size_b", *components]
    assert len(rows) == 63
    assert {row[1] for row in rows} == {"base"}

    for name in ["correlations", "pca_scree", "pca_loadings", "pca_scores_pc1_pc2"]:
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
    assert not (out / "compute_fit.csv").exists()


def test_jsonl_input_gives_the_same_analysis(
    base_rows: list[dict[str, str]], base_table: analysis.ScoreTable, tmp_path: Path
) -> None:
    path = tmp_path / "scores.jsonl"
    lines = [
        json.dumps({k: (v if k in ("model", "type") else float(v)) for k, v in row.items()})
        for row in base_rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    table = analysis.load_table(path, label_columns=["size_b"])
    assert table.benchmarks == base_table.benchmarks
    np.testing.assert_array_equal(table.scores, base_table.scores)


def test_where_compares_numbers_by_value(leaderboard: Path) -> None:
    table = analysis.load_table(leaderboard, [*BASE, ("size_b", "8")], ["size_b"])
    assert len(table.names) > 3
    assert set(table.label("size_b")) == {"8.0"}


def test_importing_the_command_leaves_numpy_and_matplotlib_unloaded() -> None:
    code = (
        "import sys, palimpsest.commands.analyze\n"
        "heavy = {'numpy', 'matplotlib', 'palimpsest.analysis'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- missing values --------------------------------------------------------------------------


def test_rows_with_missing_values_are_dropped_and_reported(tmp_path: Path) -> None:
    rows = small_rows(7)
    rows[2][3] = ""
    rows[5][4] = "NA"
    table = analysis.load_table(small_csv(tmp_path, rows), label_columns=["size_b"])
    assert table.dropped_rows == (
        analysis.DroppedRow("org/m2", 4, ("B",)),
        analysis.DroppedRow("org/m5", 7, ("C",)),
    )
    complete = [row for i, row in enumerate(small_rows(7)) if i not in (2, 5)]
    (tmp_path / "complete").mkdir()
    expected = analysis.load_table(
        small_csv(tmp_path / "complete", complete), label_columns=["size_b"]
    )
    np.testing.assert_array_equal(table.scores, expected.scores)
    text = "\n".join(analysis.describe_rows(table))
    assert "Dropped 2 row(s) missing a benchmark value" in text
    assert "line 4 org/m2: missing B" in text


def test_empty_column_is_dropped_and_reported(tmp_path: Path) -> None:
    rows = [[*row, ""] for row in small_rows()]
    path = write_csv(tmp_path / "s.csv", [*SMALL_HEADER, "D"], rows)
    table = analysis.load_table(path, label_columns=["size_b"])
    assert table.benchmarks == ("A", "B", "C")
    assert table.dropped_columns == ("D",)
    assert "Dropped columns with no value at all: D." in analysis.describe_rows(table)


def test_text_column_is_a_label(tmp_path: Path) -> None:
    rows = [[*row, f"family{i % 2}"] for i, row in enumerate(small_rows())]
    path = write_csv(tmp_path / "s.csv", [*SMALL_HEADER, "family"], rows)
    table = analysis.load_table(path)
    assert table.label_columns == ("model", "family")
    assert table.benchmarks == ("size_b", "A", "B", "C")


# --- hostile input ---------------------------------------------------------------------------


def hostile(tmp_path: Path, text: str, suffix: str = ".csv") -> Path:
    path = tmp_path / f"scores{suffix}"
    path.write_text(text, encoding="utf-8")
    return path


def small_text(rows: list[list[object]] | None = None) -> str:
    lines: list[Sequence[object]] = [SMALL_HEADER, *(small_rows() if rows is None else rows)]
    return "".join(",".join(map(str, line)) + "\n" for line in lines)


def with_cell(row: int, column: int, value: object) -> list[list[object]]:
    rows = small_rows()
    rows[row][column] = value
    return rows


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("", ".csv", "is empty"),
        ("\n  \n", ".csv", "is empty"),
        ("", ".jsonl", "is empty"),
        (",".join(SMALL_HEADER) + "\n", ".csv", "header but no data rows"),
        (small_text(small_rows(2)), ".csv", "at least 3 complete rows are needed, found 2"),
        (small_text(with_cell(3, 3, "n.a.")), ".csv", "line 5 ('org/m3'): column 'B' holds"),
        (small_text(with_cell(1, 4, "inf")), ".csv", "column 'C' holds 'inf'"),
        (small_text([[*r[:4], 0.5] for r in small_rows()]), ".csv", "column 'C' is constant"),
        (small_text() + "org/x,1,2\n", ".csv", "line 8: 3 cells, but the header has 5"),
        ("model,A,A\nm,1,2\n", ".csv", "column 'A' appears twice"),
        ("model,size_b,A\nm0,1,1\nm1,2,2\nm2,3,4\n", ".csv", "at least 2 numeric benchmark"),
        ('{"model": "m", "A": 1}\n{"model": \n', ".jsonl", "line 2: not JSON"),
        ("[1, 2]\n", ".jsonl", "line 1: expected a JSON object"),
        ('{"model": "m", "A": [1]}\n', ".jsonl", "field 'A' is a list"),
    ],
)
def test_hostile_tables_are_refused(tmp_path: Path, text: str, suffix: str, message: str) -> None:
    with pytest.raises(analysis.ScoreTableError, match=re.escape(message)):
        analysis.load_table(hostile(tmp_path, text, suffix), label_columns=["size_b"])


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    path = small_csv(tmp_path)
    with pytest.raises(analysis.ScoreTableError, match="no column 'kind'"):
        analysis.load_table(path, [("kind", "base")])
    with pytest.raises(analysis.ScoreTableError, match=r"no row matches \(values seen"):
        analysis.load_table(path, [("model", "nobody")])
    with pytest.raises(analysis.ScoreTableError, match="--label-columns: no column 'params'"):
        analysis.load_table(path, label_columns=["params"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "column 'C' is constant"),
        (["--where", "flavour=x"], "no column 'flavour'"),
        (["--label-columns", "size_b,params"], "no column 'params'"),
        (["--compute-column", "flops"], "compute: no column 'flops'"),
    ],
)
def test_cli_reports_bad_input_on_stderr_with_exit_code_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    path = hostile(tmp_path, small_text([[*r[:4], 0.5] for r in small_rows()]))
    assert run_cli([str(path), "--out", str(tmp_path / "out"), *extra], monkeypatch) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("palimpsest analyze: ")
    assert message in captured.err


def test_cli_reports_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / "absent.csv"), "--out", str(tmp_path / "out")]
    assert run_cli(argv, monkeypatch) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_rejects_malformed_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli([str(small_csv(tmp_path)), "--out", str(tmp_path), "--where", "base"], monkeypatch)
    assert exit_info.value.code == 2


# --- compute fit -----------------------------------------------------------------------------


def compute_table(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Models whose first factor grows with log compute (6 x params x tokens)."""
    rng = np.random.default_rng(7)
    n = 20
    params = rng.uniform(0.5, 70, n)
    tokens = rng.uniform(1, 15, n)
    log_compute = np.log10(6 * params * tokens)
    general = log_compute - log_compute.mean()
    other = rng.normal(size=n)
    header = ["model", "params", "tokens", "A", "B", "C", "D"]
    rows = [
        [
            f"m{i}",
            params[i],
            tokens[i],
            0.5 + 0.1 * general[i] + 0.01 * rng.normal(),
            0.4 + 0.1 * general[i] + 0.01 * rng.normal(),
            0.3 + 0.05 * other[i] + 0.02 * general[i],
            0.6 - 0.05 * other[i] + 0.02 * general[i],
        ]
        for i in range(n)
    ]
    rows[3][1] = ""  # no parameter count: left out of the fit, kept in the PCA
    return write_csv(tmp_path / "compute.csv", header, rows), log_compute


def test_compute_fit_matches_polyfit(tmp_path: Path) -> None:
    path, log_compute = compute_table(tmp_path)
    result = analysis.analyze(path, tmp_path / "out", compute_columns=["params", "tokens"])
    fit = result.fit
    assert fit is not None
    assert fit.column == "6 x params x tokens"
    assert fit.left_out == ("m3",)
    assert result.table.benchmarks == ("A", "B", "C", "D")
    used = np.delete(np.arange(20), 3)
    np.testing.assert_allclose(fit.log_compute, log_compute[used])
    for k in range(2):
        slope, intercept = np.polyfit(log_compute[used], result.pca.scores[used, k], 1)
        assert fit.slopes[k] == pytest.approx(slope)
        assert fit.intercepts[k] == pytest.approx(intercept)
        r = hand_pearson(list(log_compute[used]), list(result.pca.scores[used, k]))
        assert fit.r[k] == pytest.approx(r)
    assert fit.r[0] > 0.8
    header, rows = read_csv(tmp_path / "out" / "compute_fit.csv")
    assert header == ["component", "slope_per_decade", "intercept", "r", "rows"]
    assert [row[0] for row in rows] == ["PC1", "PC2", "PC3"]
    assert (tmp_path / "out" / "compute_fit.png").is_file()
    assert "against log10 compute (6 x params x tokens), 19 rows" in result.summary


def test_cli_compute_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = compute_table(tmp_path)
    argv = [str(path), "--out", str(tmp_path / "o"), "--compute-column", "params"]
    assert run_cli([*argv, "--label-columns", "tokens", "--components", "2"], monkeypatch) == 0
    assert "against log10 compute (params), 19 rows" in capsys.readouterr().out
    assert [row[0] for row in read_csv(tmp_path / "o" / "compute_fit.csv")[1]] == ["PC1", "PC2"]
