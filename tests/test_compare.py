"""`pyro-moe compare-estimators`: files, table contents and a clear error for unknown names."""

from __future__ import annotations

import csv

from pyro_moe.cli import main


def test_compare_estimators_writes_table_and_figures(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare-estimators",
            "--model",
            "moe",
            "--data",
            "sign-flip",
            "--data-option",
            "n=60",
            "--experts",
            "2",
            "--estimators",
            "enum,rloo,st-gumbel",
            "--epochs",
            "2",
            "--num-estimates",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in ("estimators.csv", "estimators.md", "bias_variance.png", "snr.png"):
        assert (out / name).is_file(), name
    assert (out / "objective_vs_time.png").is_file()
    rows = list(csv.DictReader((out / "estimators.csv").open()))
    assert {r["estimator"] for r in rows} == {"enum", "rloo", "st-gumbel"}
    assert {"gate", "experts", "encoder", "all"} <= {r["group"] for r in rows}
    enum_all = next(r for r in rows if r["estimator"] == "enum" and r["group"] == "all")
    assert float(enum_all["bias"]) < 1e-3  # enum is the exact gradient itself
    training = list(csv.DictReader((out / "training_variance.csv").open()))
    assert {r["epoch"] for r in training} == {"1", "2"}


def test_compare_estimators_unknown_name(tmp_path, capsys):
    code = main(
        [
            "compare-estimators",
            "--data",
            "sign-flip",
            "--estimators",
            "nope",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "unknown estimator(s) nope" in capsys.readouterr().err
