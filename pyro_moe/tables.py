"""Tables of rows (dicts) written for machines (CSV) and for people (GitHub markdown): the one
writer of each, for run folders, the estimator comparison and the benchmarks."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyro_moe.checkpoint import atomic_write_text


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys, first seen first."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text with a header (columns: :func:`columns_of` unless given)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(columns or columns_of(rows)), lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV to ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, csv_text(rows))


def cell(value: Any) -> str:
    """A markdown cell: floats to 4 significant digits, anything else as ``str``."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` over ``columns`` (a missing value is an empty cell)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
