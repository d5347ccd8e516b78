"""Guides (amortized posteriors), registered by name in :data:`pyro_moe.registry.GUIDES`."""

from pyro_moe.guides import deep_clustering, moe, vae_moe  # noqa: F401  (register the guides)

from pyro_moe.registry import GUIDES

__all__ = ["GUIDES"]
