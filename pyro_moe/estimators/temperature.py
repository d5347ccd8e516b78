"""Temperature schedules for the relaxed estimators, kept as buffers (saved in checkpoints).

* ``constant``: tau_t = tau_0.
* ``exp``: tau_t = max(tau_min, tau_0 exp(-r t)) after step t (Jang et al. 2017 anneal
  tau = max(0.5, exp(-r t)) with r in {1e-5, 1e-4}).

References:
    1. E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_moe.errors import ConfigError

SCHEDULES = ("constant", "exp")


class Temperature(nn.Module):
    """A temperature and its schedule; :meth:`advance` moves it to step t."""

    def __init__(
        self,
        temperature: float = 1.0,
        schedule: str = "constant",
        rate: float = 1e-4,
        tau_min: float = 0.5,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ConfigError(f"temperature schedule must be one of {SCHEDULES}, got {schedule!r}")
        for name, value in (("temperature", temperature), ("tau_min", tau_min)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(rate) and rate >= 0):
            raise ConfigError(f"temperature rate must be >= 0, got {rate!r}")
        self.schedule = schedule
        self.register_buffer("initial", torch.tensor(float(temperature)))
        self.register_buffer("rate", torch.tensor(float(rate)))
        self.register_buffer("tau_min", torch.tensor(float(tau_min)))
        self.register_buffer("value", torch.tensor(float(temperature)))

    def advance(self, step: int) -> None:
        if self.schedule == "exp":
            annealed = self.initial * torch.exp(-self.rate * (step + 1))
            self.value.copy_(torch.maximum(self.tau_min, annealed))

    def forward(self) -> float:
        return float(self.value)

    def extra_repr(self) -> str:
        return f"schedule={self.schedule}, value={float(self.value):.4g}"
