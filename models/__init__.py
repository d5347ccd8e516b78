"""Model families, registered by name in :data:`pyro_moe.registry.MODELS`."""

from pyro_moe.models import moe, vae_moe  # noqa: F401  (register the models)

from pyro_moe.registry import MODELS

__all__ = ["MODELS"]
