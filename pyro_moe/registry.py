"""Name -> object registries for models, guides, estimators and data sets.

The CLI, the variance harness, the tests and the notebooks all loop over these registries, so a new
model, guide, estimator or data set is one decorated definition::

    @MODELS.register("moe")
    class MixtureOfExperts(nn.Module): ...

Unknown names raise :class:`~pyro_moe.errors.UnknownNameError` listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pyro_moe.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping from names to objects of one kind (``"model"``, ``"estimator"``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that stores its argument under ``name`` and returns it unchanged."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())


def first_doc_line(obj: object) -> str:
    """The first line of ``obj``'s docstring, for ``pyro-moe list``."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


# The library's four registries; importing ``pyro_moe`` fills them.
MODELS: Registry[type] = Registry("model")
GUIDES: Registry[type] = Registry("guide")
ESTIMATORS: Registry[type] = Registry("estimator")
DATASETS: Registry[Callable] = Registry("data set")
