"""No growth over ~120 training steps: no leaked graphs, traces or tensors.

The live-tensor count after each epoch must stay flat (exact: a step that kept its graph or a
Pyro trace alive would add tensors every epoch), and resident memory must not climb by more than
32 MiB after the first epoch (allocator noise is a few MiB).
"""

from __future__ import annotations

import pytest

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.benchmarking import live_tensors, rss_mb


@pytest.mark.parametrize("estimator,guide", [("enum", "none"), ("reinforce", "posterior")])
def test_no_growth_over_training(estimator, guide):
    spec = RunSpec(
        model="moe",
        data="bishop",
        estimator=estimator,
        guide=guide,
        data_options={"n": 400},
        model_options={"num_components": 3, "gate": "mlp", "hidden_dim": 16},
    )
    data, model, g, est = build(spec)
    samples: list[tuple[int, float]] = []

    def measure(trainer):
        samples.append((live_tensors(), rss_mb()[0]))

    config = TrainConfig(epochs=5, batch_size=10, patience=None, progress=False)
    result = fit(model, g, est, data, config, callbacks=[measure])
    assert result.state.step == 5 * (len(data.train) // 10) >= 100
    tensors = [t for t, _ in samples[1:]]
    assert max(tensors) == min(tensors), f"live tensors grew: {tensors}"
    rss = [r for _, r in samples[1:]]
    assert rss[-1] - rss[0] < 32, f"resident memory grew: {rss}"


def test_live_tensors_counts_past_a_dead_weak_proxy():
    """A weak proxy whose referent is gone (numba leaves such proxies behind) must not stop the
    count: ``isinstance`` on it raises ReferenceError."""
    import weakref

    import torch

    class Referent:
        pass

    referent = Referent()
    proxy = weakref.proxy(referent)
    del referent
    before = live_tensors()
    kept = [torch.zeros(1), torch.ones(2)]
    assert live_tensors() == before + len(kept)
    assert proxy is not None
