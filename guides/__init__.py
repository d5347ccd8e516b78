"""Guides (amortized posteriors), registered by name in :data:`pyro_moe.registry.GUIDES`."""

from pyro_moe.guides import cat_vae, deep_clustering, dlgmm, moe, vae_moe  # noqa: F401  (register them)

from pyro_moe.registry import GUIDES

__all__ = ["GUIDES"]
