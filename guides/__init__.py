"""Guides (amortized posteriors), registered by name in :data:`pyro_moe.registry.GUIDES`."""

from pyro_moe.guides import (  # noqa: F401  (register them)
    bayes_moe,
    cat_vae,
    deep_clustering,
    dlgmm,
    moe,
    vae_moe,
)

from pyro_moe.registry import GUIDES

__all__ = ["GUIDES"]
