"""The committed Table 1 results (benchmarks/results/table1_dvmoe.json) carry their statistics:
the Wilcoxon p-value, the bootstrap intervals, the outcome of every run and the verdict recompute
from the per-seed numbers, and the results README states that verdict."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_moe import stats

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RECORD = json.loads((RESULTS / "table1_dvmoe.json").read_text())
DIMS = sorted(RECORD["results"]["dims"], key=int)
VERDICT_LINE = re.compile(
    r"D = (\d+): mean-MSE ratio ([\d.e+-]+) \[([\d.e+-]+), ([\d.e+-]+)\], Wilcoxon p = "
    r"([\d.e+-]+), DVMoE better on (\d+) of (\d+) seeds: ([a-zA-Z ]+)\."
)


def mses(dim: str, model: str) -> list[float]:
    return [r["mse"] for r in RECORD["results"]["dims"][dim]["per_seed"][model]]


def test_the_committed_run_has_twenty_paired_seeds_per_dimension():
    assert DIMS == ["1", "2", "5"]
    for dim in DIMS:
        per_seed = RECORD["results"]["dims"][dim]["per_seed"]
        seeds = [[r["seed"] for r in per_seed[m]] for m in ("Deep MoE", "DVMoE")]
        assert seeds[0] == seeds[1] and len(set(seeds[0])) >= 20


def test_validation_seeds_are_not_test_seeds():
    search = RECORD["results"]["search"]
    tested = {r["seed"] for e in RECORD["results"]["dims"].values() for r in e["per_seed"]["DVMoE"]}
    for entry in search.values():
        best = min(entry["candidates"], key=lambda c: c["score"])
        assert best["config"] == entry["chosen"]
    assert not tested & set(RECORD["results"]["valid_seeds"])


@pytest.mark.parametrize("dim", DIMS)
def test_p_value_and_intervals_recompute_from_the_committed_json(dim):
    recorded = RECORD["results"]["dims"][dim]["statistics"]
    dv, deep = mses(dim, "DVMoE"), mses(dim, "Deep MoE")
    recomputed = stats.paired_summary(
        dv, deep, resamples=recorded["resamples"], seed=recorded["bootstrap_seed"]
    )
    for key in ("p_value", "statistic", "a_better", "n"):
        assert recomputed[key] == pytest.approx(recorded[key], rel=1e-12), key
    for name in ("ratio_of_means", "geo_ratio"):
        for end in ("", "_low", "_high"):
            key = name + end
            assert recomputed[key] == pytest.approx(recorded[key], rel=1e-12), key


@pytest.mark.parametrize("dim", DIMS)
def test_outcomes_and_verdict_follow_the_stated_rules(dim):
    rules = RECORD["results"]["rules"]
    for records in RECORD["results"]["dims"][dim]["per_seed"].values():
        for r in records:
            if r["mse"] <= rules["converged_mse"]:
                expected = "converged"
            elif r["smallest_expert_share"] < rules["collapse_share"]:
                expected = "collapsed gate"
            else:
                expected = "stuck"
            assert r["outcome"] == expected
    s = RECORD["results"]["dims"][dim]["statistics"]
    significant = s["p_value"] < rules["alpha"]
    if significant and s["ratio_of_means_high"] < 1:
        assert s["verdict"] == "DVMoE better"
    elif significant and s["ratio_of_means_low"] > 1:
        assert s["verdict"] == "Deep MoE better"
    else:
        assert s["verdict"] == "no significant difference"


def test_results_readme_states_the_measured_verdict():
    """benchmarks/results/README.md gives, per D, the ratio, its interval, the p-value, the wins
    and the verdict, each as the JSON has it (2 significant digits)."""
    text = (RESULTS / "README.md").read_text()
    stated = {m[0]: m[1:] for m in VERDICT_LINE.findall(" ".join(text.split()))}
    assert sorted(stated, key=int) == DIMS
    for dim in DIMS:
        s = RECORD["results"]["dims"][dim]["statistics"]
        numbers = (s["ratio_of_means"], s["ratio_of_means_low"], s["ratio_of_means_high"])
        expected = (*(f"{x:.2g}" for x in numbers), f"{s['p_value']:.2g}")
        expected += (str(s["a_better"]), str(s["n"]), s["verdict"])
        assert stated[dim] == expected


@pytest.mark.parametrize(
    "bad", [["--seeds", "0"], ["--valid-seeds", "3"], ["--alpha", "1.5"], ["--lrs", "-1"]]
)
def test_the_script_refuses_bad_arguments_in_one_line(tmp_path, bad):
    script = RESULTS.parent / "table1_dvmoe.py"
    command = [sys.executable, str(script), *bad, "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
