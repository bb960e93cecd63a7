"""Benchmark correlations and ability factors for a table of LLM scores.

A corpus rewrite is judged by how the models trained on it score on many benchmarks at once.
This module turns such a table (rows are models, columns are benchmarks) into the figures used
to read it: Pearson correlations between benchmarks, and a principal component analysis of the
standardized scores whose leading components read as ability factors (general, language,
arithmetic/code...). Optionally the factor scores are fitted against log training compute.

Conventions, fixed so that two runs on the same table give the same files:

* Columns: a column listed as a label column, or whose filled cells are all non-numeric, is a
  label (model name, type, parameter count...). Every other column is a benchmark, and every
  filled cell in it must be a finite number. Rows are named by the first text label column.
* Missing values: an empty cell (or NA, N/A, NaN, null, None) is missing. A benchmark column
  with no value at all is dropped; then every row missing any benchmark value is dropped
  (complete cases), so that correlations and PCA describe one and the same set of models.
  Both drops are reported.
* Standardization uses the population standard deviation (ddof=0). The choice scales the
  eigenvalues and scores by a common factor only: correlations, explained variance ratios and
  loadings are unchanged.
* Loadings are correlations between a benchmark and a component (eigenvector times the square
  root of its eigenvalue). Scores are projections of the standardized table on the unit
  eigenvectors, so the variance of component k over the models is its eigenvalue.
* Sign convention: each component is oriented so that its largest-magnitude loading is
  positive (the first in column order when magnitudes tie to 1e-9). A component therefore
  reads as "more of the benchmark that defines it", and a first component on which every
  benchmark loads the same way points towards higher scores.

Only the readers (`read_raw`, `load_table`), the `write_*` and `plot_*` functions and
`analyze` touch files; the rest are pure functions over numpy arrays. Plots are drawn on
matplotlib's Agg canvas directly, never through pyplot's global state.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FloatArray = npt.NDArray[np.float64]
Format = Literal["csv", "jsonl"]

MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
DEFAULT_COMPONENTS = 3
DEFAULT_TOP = 5


class ScoreTableError(ValueError):
    """The input table cannot be analysed; the message names the file, column or row."""


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class RawTable:
    """Cells as text (None when missing), before any column is typed."""

    source: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str | None, ...], ...]
    lines: tuple[int, ...]  # line in the file where each row starts

    def row_label(self, index: int) -> str:
        """How an error message names a row: its line, and its first non-empty cell."""
        first = next((cell for cell in self.rows[index] if cell is not None), None)
        named = f" ({first!r})" if first is not None else ""
        return f"{self.source}, line {self.lines[index]}{named}"


def read_raw(path: Path, fmt: Format | None = None) -> RawTable:
    """Read a CSV or JSONL score table; the format follows the file suffix unless given."""
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ScoreTableError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScoreTableError(f"{source} is not UTF-8 text") from None
    if not text.strip():
        raise ScoreTableError(f"{source} is empty")
    chosen = fmt or ("jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "csv")
    table = parse_jsonl(text, source) if chosen == "jsonl" else parse_csv(text, source)
    if not table.rows:
        raise ScoreTableError(f"{source} has a header but no data rows")
    return table


def _missing_to_none(cell: str) -> str | None:
    stripped = cell.strip()
    return None if stripped.lower() in MISSING_TOKENS else stripped


def _check_header(columns: Sequence[str], source: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in columns)
    for position, name in enumerate(names, start=1):
        if not name:
            raise ScoreTableError(f"{source}: column {position} of the header has no name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ScoreTableError(f"{source}: column {name!r} appears twice in the header")
        seen.add(name)
    return names


def parse_csv(text: str, source: str) -> RawTable:
    """Parse CSV text whose first line is the header; blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise ScoreTableError(f"{source}: the first line should be a header")
    columns = _check_header(header, source)
    rows: list[tuple[str | None, ...]] = []
    lines: list[int] = []
    start = reader.line_num + 1
    for cells in reader:
        if any(cell.strip() for cell in cells):
            if len(cells) != len(columns):
                raise ScoreTableError(
                    f"{source}, line {start}: {len(cells)} cells, but the header has "
                    f"{len(columns)} columns"
                )
            rows.append(tuple(_missing_to_none(cell) for cell in cells))
            lines.append(start)
        start = reader.line_num + 1
    return RawTable(source, columns, tuple(rows), tuple(lines))


def _json_cell(value: object, where: str, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return _missing_to_none(value)
    raise ScoreTableError(f"{where}: field {key!r} is a {type(value).__name__}, not a value")


def parse_jsonl(text: str, source: str) -> RawTable:
    """Parse JSON Lines, one object per model; columns are the keys in first-seen order."""
    objects: list[dict[str, object]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScoreTableError(f"{source}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ScoreTableError(f"{source}, line {number}: expected a JSON object per line")
        objects.append(value)
        lines.append(number)
    columns = _check_header(list(dict.fromkeys(key for obj in objects for key in obj)), source)
    rows = tuple(
        tuple(_json_cell(obj.get(key), f"{source}, line {line}", key) for key in columns)
        for obj, line in zip(objects, lines, strict=True)
    )
    return RawTable(source, columns, rows, tuple(lines))


# ---------------------------------------------------------------------------------------------
# Selecting rows and typing columns


def as_number(cell: str | None) -> float | None:
    """The finite number a cell holds, or None when it holds none."""
    if cell is None:
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _cell_matches(cell: str | None, value: str) -> bool:
    if cell is None:
        return value == ""
    if cell == value:
        return True
    left, right = as_number(cell), as_number(value)
    return left is not None and left == right


def select_rows(raw: RawTable, where: Sequence[tuple[str, str]]) -> RawTable:
    """Keep the rows matching every COLUMN=VALUE filter (numbers compare by value)."""
    for column, value in where:
        if column not in raw.columns:
            raise ScoreTableError(
                f"--where {column}={value}: no column {column!r} in {raw.source} "
                f"(columns: {', '.join(raw.columns)})"
            )
        index = raw.columns.index(column)
        keep = [i for i, row in enumerate(raw.rows) if _cell_matches(row[index], value)]
        if not keep:
            present = sorted({row[index] or "" for row in raw.rows})
            raise ScoreTableError(
                f"--where {column}={value}: no row matches (values seen: "
                f"{', '.join(present[:10])}{', ...' if len(present) > 10 else ''})"
            )
        raw = RawTable(
            raw.source,
            raw.columns,
            tuple(raw.rows[i] for i in keep),
            tuple(raw.lines[i] for i in keep),
        )
    return raw


def _is_text_column(raw: RawTable, index: int) -> bool:
    """Some cell is filled and none holds a number (an empty column is not text)."""
    cells = [row[index] for row in raw.rows if row[index] is not None]
    return bool(cells) and all(as_number(cell) is None for cell in cells)


def _numeric_column(raw: RawTable, index: int) -> FloatArray:
    """The column as floats, NaN where missing; a text cell is an error naming the row."""
    name = raw.columns[index]
    values = np.full(len(raw.rows), np.nan)
    for i, row in enumerate(raw.rows):
        cell = row[index]
        number = as_number(cell)
        if cell is not None and number is None:
            raise ScoreTableError(
                f"{raw.row_label(i)}: column {name!r} holds {cell!r}, which is not a finite "
                f"number, while other rows hold numbers. Fix the cell, leave it empty to mark it "
                f"missing, or list {name!r} in --label-columns if it is not a benchmark."
            )
        if number is not None:
            values[i] = number
    return values


@dataclass(frozen=True)
class DroppedRow:
    """A row left out for missing benchmark values."""

    name: str
    line: int
    missing: tuple[str, ...]


@dataclass(frozen=True)
class ScoreTable:
    """Complete-case benchmark scores (models x benchmarks) with each model's labels."""

    source: str
    benchmarks: tuple[str, ...]
    scores: FloatArray
    label_columns: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]  # per row, one text per label column ("" if missing)
    names: tuple[str, ...]
    lines: tuple[int, ...]
    rows_read: int
    rows_selected: int
    dropped_columns: tuple[str, ...] = ()
    dropped_rows: tuple[DroppedRow, ...] = ()
    where: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        self.scores.setflags(write=False)

    def label(self, column: str) -> tuple[str, ...]:
        """One label column's text for every row."""
        index = self.label_columns.index(column)
        return tuple(row[index] for row in self.labels)


def _row_names(raw: RawTable, label_indices: Sequence[int]) -> tuple[str, ...]:
    """Rows are named by the first all-text label column, else by their line in the file."""
    text_columns = [i for i in label_indices if _is_text_column(raw, i)]
    if not text_columns:
        return tuple(f"line {line}" for line in raw.lines)
    index = text_columns[0]
    return tuple(
        row[index] or f"line {line}" for row, line in zip(raw.rows, raw.lines, strict=True)
    )


def build_table(
    raw: RawTable,
    label_columns: Iterable[str] = (),
    rows_read: int | None = None,
    where: Sequence[tuple[str, str]] = (),
) -> ScoreTable:
    """Type the columns, drop missing values as documented above, and validate the rest."""
    declared = list(dict.fromkeys(label_columns))
    unknown = [name for name in declared if name not in raw.columns]
    if unknown:
        raise ScoreTableError(
            f"--label-columns: no column {', '.join(map(repr, unknown))} in {raw.source} "
            f"(columns: {', '.join(raw.columns)})"
        )
    label_idx = [
        i for i, name in enumerate(raw.columns) if name in declared or _is_text_column(raw, i)
    ]
    bench_idx = [i for i in range(len(raw.columns)) if i not in label_idx]
    columns = {raw.columns[i]: _numeric_column(raw, i) for i in bench_idx}
    dropped_columns = tuple(name for name, values in columns.items() if np.isnan(values).all())
    kept = [name for name in columns if name not in dropped_columns]
    names = _row_names(raw, label_idx)
    matrix = np.column_stack([columns[name] for name in kept]) if kept else np.empty((0, 0))
    complete, dropped_rows = _complete_rows(matrix, kept, names, raw.lines)
    table = ScoreTable(
        source=raw.source,
        benchmarks=tuple(kept),
        scores=np.ascontiguousarray(matrix[complete]) if kept else matrix,
        label_columns=tuple(raw.columns[i] for i in label_idx),
        labels=tuple(tuple(raw.rows[r][i] or "" for i in label_idx) for r in complete),
        names=tuple(names[r] for r in complete),
        lines=tuple(raw.lines[r] for r in complete),
        rows_read=len(raw.rows) if rows_read is None else rows_read,
        rows_selected=len(raw.rows),
        dropped_columns=dropped_columns,
        dropped_rows=dropped_rows,
        where=tuple(where),
    )
    validate(table)
    return table


def _complete_rows(
    matrix: FloatArray, benchmarks: Sequence[str], names: Sequence[str], lines: Sequence[int]
) -> tuple[list[int], tuple[DroppedRow, ...]]:
    if not benchmarks:
        return [], ()
    missing = np.isnan(matrix)
    complete = [i for i in range(matrix.shape[0]) if not missing[i].any()]
    dropped = tuple(
        DroppedRow(
            names[i], lines[i], tuple(b for b, m in zip(benchmarks, missing[i], strict=True) if m)
        )
        for i in range(matrix.shape[0])
        if missing[i].any()
    )
    return complete, dropped


def validate(table: ScoreTable) -> None:
    """Refuse tables the analysis cannot describe: too few benchmarks or rows, constants."""
    source = table.source
    if len(table.benchmarks) < 2:
        found = ", ".join(table.benchmarks) or "none"
        raise ScoreTableError(
            f"{source}: at least 2 numeric benchmark columns are needed, found {found} "
            f"(label columns: {', '.join(table.label_columns) or 'none'})"
        )
    n_rows = table.scores.shape[0]
    if n_rows < 3:
        dropped = len(table.dropped_rows)
        raise ScoreTableError(
            f"{source}: at least 3 complete rows are needed, found {n_rows} "
            f"({dropped} dropped for missing benchmark values)"
        )
    for j, name in enumerate(table.benchmarks):
        column = table.scores[:, j]
        if np.ptp(column) == 0:
            raise ScoreTableError(
                f"{source}: column {name!r} is constant ({column[0]:g} in all {n_rows} rows), "
                f"so it has no correlation; remove it or list it in --label-columns"
            )


def load_table(
    path: Path,
    where: Sequence[tuple[str, str]] = (),
    label_columns: Iterable[str] = (),
    fmt: Format | None = None,
) -> ScoreTable:
    """Read, filter and type a score table."""
    raw = read_raw(path, fmt)
    selected = select_rows(raw, where)
    return build_table(selected, label_columns, rows_read=len(raw.rows), where=where)


# ---------------------------------------------------------------------------------------------
# Statistics


def standardize(x: FloatArray) -> FloatArray:
    """Centre each column and divide by its population standard deviation."""
    z: FloatArray = (x - x.mean(axis=0)) / x.std(axis=0)
    return z


def pearson_matrix(x: FloatArray) -> FloatArray:
    """Pearson correlations between the columns of x (rows are observations)."""
    z = standardize(x)
    r: FloatArray = np.clip(z.T @ z / x.shape[0], -1.0, 1.0)
    np.fill_diagonal(r, 1.0)
    return r


@dataclass(frozen=True)
class PCAResult:
    """PCA of standardized scores; columns beyond `n_components` are not kept."""

    eigenvalues: FloatArray  # (k,)
    explained_variance_ratio: FloatArray  # (k,)
    eigenvectors: FloatArray  # (benchmarks, k), unit columns
    loadings: FloatArray  # (benchmarks, k), correlations with the components
    scores: FloatArray  # (rows, k)

    @property
    def n_components(self) -> int:
        return int(self.eigenvalues.shape[0])


TIE_TOLERANCE = 1e-9


def orient(vectors: FloatArray) -> FloatArray:
    """Flip each column so that its largest-magnitude entry is positive.

    Magnitudes within TIE_TOLERANCE of the largest count as tied (two benchmarks always tie on
    the first component), and the first tied entry decides, so rounding cannot flip a sign.
    """
    magnitudes = np.abs(vectors)
    pivots = np.argmax(magnitudes >= magnitudes.max(axis=0) - TIE_TOLERANCE, axis=0)
    signs = np.sign(vectors[pivots, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    oriented: FloatArray = vectors * signs
    return oriented


def pca(x: FloatArray) -> PCAResult:
    """Eigendecomposition of the correlation matrix of x.

    Only min(rows - 1, columns) components are kept: past that the standardized table has no
    variance left and the eigenvectors are arbitrary.
    """
    n_rows, n_cols = x.shape
    eigenvalues, eigenvectors = np.linalg.eigh(pearson_matrix(x))
    order = np.argsort(eigenvalues)[::-1][: min(n_rows - 1, n_cols)]
    values = np.clip(eigenvalues[order], 0.0, None)
    vectors = orient(eigenvectors[:, order])
    return PCAResult(
        eigenvalues=values,
        explained_variance_ratio=values / n_cols,
        eigenvectors=vectors,
        loadings=vectors * np.sqrt(values),
        scores=standardize(x) @ vectors,
    )


@dataclass(frozen=True)
class ComputeFit:
    """Least-squares fit of component scores against log10 of training compute."""

    column: str
    components: tuple[str, ...]
    slopes: FloatArray  # score units per decade of compute
    intercepts: FloatArray
    r: FloatArray
    log_compute: FloatArray  # rows used
    scores: FloatArray  # rows used x components
    names: tuple[str, ...]
    left_out: tuple[str, ...]  # rows without a usable compute value


def compute_values(table: ScoreTable, columns: Sequence[str]) -> tuple[str, FloatArray]:
    """Compute per row from one column, or 6 x params x tokens from two (NaN if unknown).

    Units are the table's own: they shift the fitted intercepts, never the slopes or r.
    """
    for name in columns:
        if name not in table.label_columns:
            raise ScoreTableError(f"compute: no column {name!r} among the label columns")
    if len(columns) == 1:
        description, factor = columns[0], 1.0
    elif len(columns) == 2:
        description, factor = f"6 x {columns[0]} x {columns[1]}", 6.0
    else:
        raise ScoreTableError("compute: give one compute column, or a params and a tokens column")
    product = np.full(len(table.names), factor)
    for name in columns:
        parsed = [as_number(cell or None) for cell in table.label(name)]
        product *= np.array([np.nan if v is None else v for v in parsed])
    return description, product


def fit_compute(table: ScoreTable, result: PCAResult, columns: Sequence[str], k: int) -> ComputeFit:
    """Fit the first k component scores against log10 compute over rows with compute > 0."""
    description, compute = compute_values(table, columns)
    usable = np.isfinite(compute) & (compute > 0)
    if usable.sum() < 3:
        raise ScoreTableError(
            f"compute ({description}): at least 3 rows with a positive value are needed, "
            f"found {int(usable.sum())}"
        )
    log_compute = np.log10(compute[usable])
    if np.ptp(log_compute) == 0:
        raise ScoreTableError(f"compute ({description}) is the same for every row")
    k = min(k, result.n_components)
    scores = result.scores[usable, :k]
    design = np.column_stack([np.ones_like(log_compute), log_compute])
    coefficients = np.linalg.lstsq(design, scores, rcond=None)[0]
    r = np.array([np.corrcoef(log_compute, scores[:, j])[0, 1] for j in range(k)])
    return ComputeFit(
        column=description,
        components=component_names(k),
        slopes=coefficients[1],
        intercepts=coefficients[0],
        r=r,
        log_compute=log_compute,
        scores=scores,
        names=tuple(name for name, ok in zip(table.names, usable, strict=True) if ok),
        left_out=tuple(name for name, ok in zip(table.names, usable, strict=True) if not ok),
    )


def component_names(k: int) -> tuple[str, ...]:
    return tuple(f"PC{i}" for i in range(1, k + 1))


def top_loadings(
    benchmarks: Sequence[str], loadings: FloatArray, top: int
) -> list[tuple[str, float]]:
    """The `top` benchmarks with the largest |loading| on one component, largest first."""
    order = sorted(range(len(benchmarks)), key=lambda j: (-abs(loadings[j]), j))[:top]
    return [(benchmarks[j], float(loadings[j])) for j in order]


def strongest_pairs(
    benchmarks: Sequence[str], r: FloatArray, count: int
) -> list[tuple[str, str, float]]:
    """The `count` most correlated distinct benchmark pairs (by |r|)."""
    pairs = [
        (benchmarks[i], benchmarks[j], float(r[i, j]))
        for i in range(len(benchmarks))
        for j in range(i + 1, len(benchmarks))
    ]
    return sorted(pairs, key=lambda pair: -abs(pair[2]))[:count]


# ---------------------------------------------------------------------------------------------
# Summary


def describe_rows(table: ScoreTable) -> list[str]:
    """What rows and columns went into the analysis, and what was dropped and why."""
    filters = " and ".join(f"{c}={v}" for c, v in table.where)
    selected = f", {table.rows_selected} with {filters}" if filters else ""
    lines = [f"Rows: {table.rows_read} read from {table.source}{selected}."]
    if table.dropped_columns:
        lines.append(f"Dropped columns with no value at all: {', '.join(table.dropped_columns)}.")
    if table.dropped_rows:
        lines.append(
            f"Dropped {len(table.dropped_rows)} row(s) missing a benchmark value "
            "(complete cases only):"
        )
        lines += [
            f"  line {row.line} {row.name}: missing {', '.join(row.missing)}"
            for row in table.dropped_rows
        ]
    elif not table.dropped_columns:
        lines.append("Missing values: none.")
    lines.append(f"Analysed {len(table.names)} rows x {len(table.benchmarks)} benchmarks.")
    lines.append(f"Label columns: {', '.join(table.label_columns) or 'none'}.")
    lines.append(f"Benchmarks: {', '.join(table.benchmarks)}.")
    return lines


def summarize(
    table: ScoreTable,
    correlations: FloatArray,
    result: PCAResult,
    components: int = DEFAULT_COMPONENTS,
    top: int = DEFAULT_TOP,
    fit: ComputeFit | None = None,
) -> str:
    """A short text report: inputs, strongest correlations, leading components."""
    lines = describe_rows(table)
    lines.append("Strongest correlations (Pearson r):")
    lines += [
        f"  {a} ~ {b}: {r:+.2f}" for a, b, r in strongest_pairs(table.benchmarks, correlations, 5)
    ]
    lines.append(
        "Leading components (PCA on standardized scores; loading = correlation with the "
        "component, sign: largest loading positive):"
    )
    cumulative = np.cumsum(result.explained_variance_ratio)
    for k, name in enumerate(component_names(min(components, result.n_components))):
        share = result.explained_variance_ratio[k]
        leaders = ", ".join(
            f"{b} {v:+.2f}" for b, v in top_loadings(table.benchmarks, result.loadings[:, k], top)
        )
        lines.append(
            f"  {name}: {share:.3f} of variance (cumulative {cumulative[k]:.3f}); "
            f"top loadings: {leaders}"
        )
    if fit is not None:
        lines += describe_fit(fit)
    return "\n".join(lines) + "\n"


def describe_fit(fit: ComputeFit) -> list[str]:
    lines = [f"Component scores against log10 compute ({fit.column}), {len(fit.names)} rows:"]
    if fit.left_out:
        lines.append(f"  left out without a positive compute value: {', '.join(fit.left_out)}")
    lines += [
        f"  {name}: {slope:+.3f} per decade, r = {r:+.2f}"
        for name, slope, r in zip(fit.components, fit.slopes, fit.r, strict=True)
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# Files


def _number(value: float) -> str:
    return repr(float(value))


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_correlations(path: Path, benchmarks: Sequence[str], r: FloatArray) -> Path:
    rows = ([name, *map(_number, r[i])] for i, name in enumerate(benchmarks))
    return _write_csv(path, ["benchmark", *benchmarks], rows)


def write_pca(out: Path, table: ScoreTable, result: PCAResult) -> list[Path]:
    names = component_names(result.n_components)
    variance = _write_csv(
        out / "pca_explained_variance.csv",
        ["component", "explained_variance_ratio"],
        ([n, _number(v)] for n, v in zip(names, result.explained_variance_ratio, strict=True)),
    )
    loadings = _write_csv(
        out / "pca_loadings.csv",
        ["benchmark", *names],
        ([b, *map(_number, result.loadings[j])] for j, b in enumerate(table.benchmarks)),
    )
    id_columns = list(table.label_columns) or ["line"]
    id_values = table.labels if table.label_columns else [(str(n),) for n in table.lines]
    scores = _write_csv(
        out / "pca_scores.csv",
        [*id_columns, *names],
        ([*ids, *map(_number, result.scores[i])] for i, ids in enumerate(id_values)),
    )
    return [variance, loadings, scores]


def write_fit(path: Path, fit: ComputeFit) -> Path:
    return _write_csv(
        path,
        ["component", "slope_per_decade", "intercept", "r", "rows"],
        (
            [name, _number(s), _number(i), _number(r), str(len(fit.names))]
            for name, s, i, r in zip(fit.components, fit.slopes, fit.intercepts, fit.r, strict=True)
        ),
    )


def short_name(name: str) -> str:
    """A model name without its organisation prefix, for plot labels."""
    return re.sub(r"^.*/", "", name)


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)
    return path


def plot_correlations(path: Path, benchmarks: Sequence[str], r: FloatArray) -> Path:
    size = 2.5 + 0.45 * len(benchmarks)
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(r, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    ticks = range(len(benchmarks))
    axes.set_xticks(ticks, benchmarks, rotation=90, fontsize=8)
    axes.set_yticks(ticks, benchmarks, fontsize=8)
    if len(benchmarks) <= 30:
        for i in ticks:
            for j in ticks:
                axes.text(j, i, f"{r[i, j]:.2f}", ha="center", va="center", fontsize=6)
    figure.colorbar(image, ax=axes, label="Pearson r")
    axes.set_title("Correlations between benchmarks")
    return _save(figure, path)


def plot_scree(path: Path, result: PCAResult) -> Path:
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(1, result.n_components + 1)
    axes.bar(positions, result.explained_variance_ratio, label="component")
    axes.plot(positions, np.cumsum(result.explained_variance_ratio), "o-", label="cumulative")
    axes.set_xticks(positions, component_names(result.n_components), rotation=90, fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("explained variance ratio")
    axes.set_title("Scree plot")
    axes.legend()
    return _save(figure, path)


def plot_loadings(path: Path, benchmarks: Sequence[str], result: PCAResult, k: int) -> Path:
    k = min(k, result.n_components)
    figure = Figure(figsize=(3.2 * k + 1.5, 1.5 + 0.3 * len(benchmarks)), layout="constrained")
    axes_row = figure.subplots(1, k, sharey=True, squeeze=False)[0]
    positions = np.arange(len(benchmarks))
    for j, axes in enumerate(axes_row):
        values = result.loadings[:, j]
        axes.barh(positions, values, color=np.where(values >= 0, "tab:blue", "tab:red"))
        axes.axvline(0, color="black", linewidth=0.8)
        axes.set_xlim(-1, 1)
        ratio = result.explained_variance_ratio[j]
        axes.set_title(f"PC{j + 1} ({ratio:.1%})")
        axes.set_xlabel("loading")
    axes_row[0].set_yticks(positions, benchmarks, fontsize=8)
    axes_row[0].invert_yaxis()
    return _save(figure, path)


def plot_scores(path: Path, names: Sequence[str], result: PCAResult) -> Path:
    figure = Figure(figsize=(10, 8), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(result.scores[:, 0], result.scores[:, 1], s=14)
    for name, x, y in zip(names, result.scores[:, 0], result.scores[:, 1], strict=True):
        axes.annotate(
            short_name(name), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points"
        )
    ratio = result.explained_variance_ratio
    axes.set_xlabel(f"PC1 ({ratio[0]:.1%})")
    axes.set_ylabel(f"PC2 ({ratio[1]:.1%})")
    axes.axhline(0, color="grey", linewidth=0.5)
    axes.axvline(0, color="grey", linewidth=0.5)
    axes.set_title("Models on the first two components")
    return _save(figure, path)


def plot_fit(path: Path, fit: ComputeFit) -> Path:
    k = len(fit.components)
    figure = Figure(figsize=(4 * k, 4), layout="constrained")
    axes_row = figure.subplots(1, k, squeeze=False)[0]
    line_x = np.linspace(np.min(fit.log_compute), np.max(fit.log_compute), 2)
    for j, axes in enumerate(axes_row):
        axes.scatter(fit.log_compute, fit.scores[:, j], s=12)
        axes.plot(line_x, fit.intercepts[j] + fit.slopes[j] * line_x, color="tab:red")
        axes.set_title(f"{fit.components[j]} (r = {fit.r[j]:+.2f})")
        axes.set_xlabel(f"log10 {fit.column}")
    axes_row[0].set_ylabel("component score")
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Whole analysis


@dataclass(frozen=True)
class Analysis:
    """Everything computed for one table, and the files written for it."""

    table: ScoreTable
    correlations: FloatArray
    pca: PCAResult
    fit: ComputeFit | None
    summary: str
    files: tuple[Path, ...]


def write_outputs(
    out: Path,
    table: ScoreTable,
    correlations: FloatArray,
    result: PCAResult,
    components: int,
    fit: ComputeFit | None,
) -> list[Path]:
    """Write every CSV and plot into `out` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [
        write_correlations(out / "correlations.csv", table.benchmarks, correlations),
        plot_correlations(out / "correlations.png", table.benchmarks, correlations),
        *write_pca(out, table, result),
        plot_scree(out / "pca_scree.png", result),
        plot_loadings(out / "pca_loadings.png", table.benchmarks, result, components),
        plot_scores(out / "pca_scores_pc1_pc2.png", table.names, result),
    ]
    if fit is not None:
        files += [write_fit(out / "compute_fit.csv", fit), plot_fit(out / "compute_fit.png", fit)]
    return files


def analyze(
    path: Path,
    out: Path,
    where: Sequence[tuple[str, str]] = (),
    label_columns: Sequence[str] = (),
    components: int = DEFAULT_COMPONENTS,
    top: int = DEFAULT_TOP,
    compute_columns: Sequence[str] = (),
    fmt: Format | None = None,
) -> Analysis:
    """Load a score table, analyse it, and write the outputs and `summary.txt` into `out`."""
    raw = read_raw(path, fmt)
    for name in compute_columns:
        if name not in raw.columns:
            raise ScoreTableError(f"compute: no column {name!r} in {raw.source}")
    selected = select_rows(raw, where)
    labels = [*label_columns, *compute_columns]
    table = build_table(selected, labels, rows_read=len(raw.rows), where=where)
    correlations = pearson_matrix(table.scores)
    result = pca(table.scores)
    fit = fit_compute(table, result, compute_columns, components) if compute_columns else None
    summary = summarize(table, correlations, result, components, top, fit)
    files = write_outputs(out, table, correlations, result, components, fit)
    summary_path = out / "summary.txt"
    summary_path.write_text(summary, encoding="utf-8")
    return Analysis(table, correlations, result, fit, summary, (*files, summary_path))
