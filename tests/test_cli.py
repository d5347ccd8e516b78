"""The command line: every listed name works; user errors are one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pyro_moe.cli import main, parse_value
from pyro_moe.registry import DATASETS, ESTIMATORS, GUIDES, MODELS

TINY = ["--epochs", "2", "--quiet", "--data-option", "n=200"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_every_registered_entry(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for registry in (MODELS, GUIDES, ESTIMATORS, DATASETS):
        for name in registry:
            assert f"  {name} " in out


def test_train_writes_a_run_folder_and_resumes(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run(
        capsys,
        "train",
        "moe",
        "--data",
        "bishop",
        "--out",
        str(out_dir),
        "-K",
        "2",
        "-o",
        "gate=mlp",
        *TINY,
    )
    assert code == 0 and "test_nll" in out and str(out_dir) in out
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "summary.json", "fit.png"):
        assert (out_dir / name).is_file(), name
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_options"] == {"gate": "mlp", "num_components": 2}
    assert config["guide"] == "none" and config["train"]["epochs"] == 2
    code, out, _ = run(
        capsys, "train", "--resume", "--out", str(out_dir), "--epochs", "4", "--quiet"
    )
    assert code == 0 and "after 4 epochs" in out
    code, out, _ = run(capsys, "evaluate", str(out_dir))
    assert code == 0 and "test_nll" in json.loads(out)


@pytest.mark.parametrize("estimator,guide", [("reinforce", "posterior"), ("reinforce-avg", "gate")])
def test_sampling_estimators_train_from_the_command_line(tmp_path, capsys, estimator, guide):
    code, _, err = run(
        capsys,
        "train",
        "moe",
        "--data",
        "sign-flip",
        "--estimator",
        estimator,
        "--guide",
        guide,
        "--out",
        str(tmp_path),
        *TINY,
    )
    assert code == 0, err


def _bad_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


BAD = {
    "nan": (
        lambda p: ["--data", _bad_npz(p, x=np.array([[np.nan]] * 20), y=np.zeros(20))],
        "NaN/inf",
    ),
    "inf": (
        lambda p: ["--data", _bad_npz(p, x=np.ones((20, 1)), y=np.r_[np.inf, np.zeros(19)])],
        "NaN/inf",
    ),
    "lengths": (
        lambda p: ["--data", _bad_npz(p, x=np.ones((20, 1)), y=np.zeros(19))],
        "x has 20 rows but y has shape",
    ),
    "dims": (lambda p: ["--data", _bad_npz(p, x=np.ones(20), y=np.zeros(20))], "must be 2-D"),
    "K<1": (lambda p: ["--data", "bishop", "-K", "0"], "K must be an integer >= 1"),
    "model": (lambda p: ["--data", "bishop", "--estimator", "enum"], "unknown model 'nope'"),
    "estimator": (
        lambda p: ["--data", "bishop", "--estimator", "magic"],
        "unknown estimator 'magic'",
    ),
    "data": (lambda p: ["--data", "mnistt"], "unknown data set 'mnistt'"),
    "guide": (
        lambda p: ["--data", "bishop", "--estimator", "reinforce", "--guide", "none"],
        "needs a guide that samples `cluster`",
    ),
    "option": (lambda p: ["--data", "bishop", "-o", "gates=mlp"], "has no option gates"),
    "missing file": (lambda p: ["--data", str(p / "absent.npz")], "does not exist"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_clear_line(tmp_path, capsys, case):
    make_args, message = BAD[case]
    model = "nope" if case == "model" else "moe"
    code, _, err = run(
        capsys, "train", model, "--out", str(tmp_path / "run"), *make_args(tmp_path), "--quiet"
    )
    assert code == 2
    assert err.startswith("pyro-moe: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_unreadable_checkpoint(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run(capsys, "train", "moe", "--data", "bishop", "--out", str(out_dir), *TINY)[0] == 0
    (out_dir / "checkpoint.pt").write_bytes(b"garbage")
    code, _, err = run(capsys, "train", "--resume", "--out", str(out_dir), "--quiet")
    assert code == 2 and "checkpoint" in err and "unreadable" in err


def test_resume_without_a_run_folder(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--resume", "--out", str(tmp_path / "none"))
    assert code == 2 and "not a run folder" in err


def test_overwrite_replaces_an_earlier_run(tmp_path, capsys):
    args = ["train", "moe", "--data", "bishop", "--out", str(tmp_path), *TINY]
    assert run(capsys, *args)[0] == 0
    assert run(capsys, *args)[0] == 2
    assert run(capsys, *args, "--overwrite")[0] == 0


def test_the_installed_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_moe.cli",
            "train",
            "moe",
            "--data",
            "bishop",
            "--out",
            str(tmp_path),
            "-K",
            "-3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "K must be" in result.stderr


def test_option_values_are_parsed():
    assert [parse_value(v) for v in ["3", "0.5", "true", "None", "mlp"]] == [
        3,
        0.5,
        True,
        None,
        "mlp",
    ]


@pytest.mark.parametrize(
    "argv, names",
    [
        (["train", "moe", "--data", "bishop", "--out", "x", "--epochs", "many"], "--epochs"),
        (["train", "moe", "--data", "bishop", "--out", "x", "--no-such-flag"], "--no-such-flag"),
        (["train", "moe", "--data", "bishop"], "--out"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(capsys, argv, names):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("pyro-moe") and "error:" in err, err
    assert names in err


def test_stored_config_with_an_unknown_key_is_refused(tmp_path):
    from pyro_moe.errors import ConfigError
    from pyro_moe.experiment import RunSpec, resume_spec
    from pyro_moe.train import TrainConfig

    with pytest.raises(ConfigError, match="unknown run spec field colour"):
        RunSpec.from_dict({"model": "moe", "data": "bishop", "colour": "red"})
    with pytest.raises(ConfigError, match="unknown training option epoch\\b"):
        TrainConfig.from_dict({"epoch": 3})
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": "moe", "data": "bishop", "train": {"epochs": 2, "speed": 1}}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="speed"):
        resume_spec(run)


def test_benchmark_scripts_usage_errors_are_one_line():
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "memory.py"
    result = subprocess.run(
        [sys.executable, str(script), "--steps", "many"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "memory.py: error:" in result.stderr, result.stderr
