"""``--device``: cpu trains; cuda trains where a GPU exists and is a one-line error where not."""

from __future__ import annotations

import pytest
import torch

from pyro_moe import TrainConfig, cli
from pyro_moe.errors import ConfigError

ARGS = ["train", "moe", "--data", "bishop", "--data-option", "n=120", "--epochs", "1"]


def test_cpu_device_trains(tmp_path, capsys):
    code = cli.main([*ARGS, "--device", "cpu", "--no-figures", "--quiet", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert all(v.device.type == "cpu" for v in state["model"].values())


def test_cuda_device(tmp_path, capsys):
    code = cli.main([*ARGS, "--device", "cuda", "--no-figures", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert code == 0, err
    else:
        assert code == 2
        assert err.startswith("pyro-moe: error:") and "no CUDA device" in err
        assert "Traceback" not in err
        with pytest.raises(ConfigError, match="CUDA"):
            TrainConfig(device="cuda")
