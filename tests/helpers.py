"""Small builders shared by the tests."""

from __future__ import annotations

from pyro_moe.verification import tiny_data, tiny_moe  # noqa: F401  (shared with benchmarks)
