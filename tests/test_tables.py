"""The one CSV writer and the one markdown-table writer."""

from __future__ import annotations

from pyro_moe.tables import csv_text, markdown_table, write_csv

ROWS = [{"a": 1, "b": 0.123456}, {"a": 2, "c": "x"}]


def test_csv_columns_are_the_union_first_seen_first(tmp_path):
    assert csv_text(ROWS) == "a,b,c\n1,0.123456,\n2,,x\n"
    write_csv(tmp_path / "sub" / "t.csv", ROWS)
    assert (tmp_path / "sub" / "t.csv").read_text() == csv_text(ROWS)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["t.csv"]  # no temporary left


def test_markdown_table_rounds_floats_and_leaves_missing_cells_empty():
    assert markdown_table(ROWS, ["a", "b", "c"]) == (
        "| a | b | c |\n|---|---|---|\n| 1 | 0.1235 |  |\n| 2 |  | x |"
    )
