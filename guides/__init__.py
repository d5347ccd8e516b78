"""Guides (amortized posteriors), registered by name in :data:`pyro_moe.registry.GUIDES`."""

from pyro_moe.guides import moe  # noqa: F401  (registers the MoE guides)

from pyro_moe.registry import GUIDES

__all__ = ["GUIDES"]
