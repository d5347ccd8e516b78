"""`pyro-moe compare-estimators`: files, table contents and a clear error for unknown names."""

from __future__ import annotations

import csv

import pytest

from pyro_moe import variance
from pyro_moe.cli import main
from pyro_moe.compare import SUMMARY_COLUMNS, SlowPathWarning


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


def test_report_is_honest_and_explained(tmp_path, capsys):
    """Header names the rows really used; every column is explained; gumbel's gate rows (analytic
    KL with the posterior guide) are called exact by construction; enum with a guide that has
    latent sites says it takes TraceEnum_ELBO; the progress bar reports both phases."""
    from pyro_moe.compare import compare_estimators, deterministic_rows
    from pyro_moe.experiment import RunSpec
    from pyro_moe.train import TrainConfig

    spec = RunSpec(
        model="moe", data="sign-flip", data_options={"n": 60}, model_options={"num_components": 2}
    )
    config = TrainConfig(epochs=1, patience=None, progress=False)
    with pytest.warns(SlowPathWarning, match="TraceEnum_ELBO"):
        rows, _ = compare_estimators(
            spec,
            ["enum", "gumbel"],
            config,
            tmp_path,
            num_estimates=6,
            figures=False,
            progress=True,
        )
    report = (tmp_path / "estimators.md").read_text()
    assert "on all 12 validation rows" in report  # 60 points, 20% validation
    for column in (*variance.COLUMNS, *SUMMARY_COLUMNS):
        assert f"- `{column}`:" in report, column
    assert {(r["estimator"], r["group"]) for r in deterministic_rows(rows)} >= {("gumbel", "gate")}
    assert "gumbel/gate" in report.split("## Rows exact by construction")[1]
    assert "`enum` with guide `posterior` computes its exact sum with TraceEnum_ELBO" in report
    err = capsys.readouterr().err
    assert "training gumbel" in err and "harness gumbel" in err


def test_estimator_options_reach_training_and_the_harness(tmp_path):
    """vimco's S-sample bound moves away from the ELBO as S grows: the harness's elbo_gap shows
    which S it measured, from per-estimator options and from the spec's options alike."""
    from dataclasses import replace

    from pyro_moe.compare import harness_at_start
    from pyro_moe.experiment import RunSpec

    spec = RunSpec(
        model="moe", data="sign-flip", data_options={"n": 60}, model_options={"num_components": 2}
    )

    def gap(**kwargs):
        rows = harness_at_start(kwargs.pop("spec", spec), ["vimco"], 4, **kwargs)
        return next(r["elbo_gap"] for r in rows if r["group"] == "all")

    two = gap(estimator_options={"vimco": {"num_particles": 2}})
    eight = gap(estimator_options={"vimco": {"num_particles": 8}})
    assert two > 0 and eight > 1.2 * two
    assert gap(spec=replace(spec, estimator_options={"num_particles": 8})) == pytest.approx(eight)


@pytest.mark.parametrize(
    "option, message",
    [
        ("num_particles=3", "is not NAME.KEY=VALUE"),
        ("rloo.num_particles", "is not NAME.KEY=VALUE"),
        ("vimco.num_particles=3", "options given for vimco, which is not among"),
    ],
)
def test_bad_estimator_options_are_one_line(tmp_path, capsys, option, message):
    argv = ["compare-estimators", "--data", "sign-flip", "--estimators", "rloo", "--epochs", "1"]
    code = main([*argv, "--estimator-option", option, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
