"""A package's public names imported on first use (PEP 562), for ``features`` and ``classifiers``.

Importing a light submodule (``features.errors``, ``classifiers.novelty``) then does
not pull in h5py, TensorFlow or scikit-learn through its package's ``__init__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, homes: dict[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``homes`` from its module."""

    def getattr_(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    def dir_() -> list[str]:
        return sorted(homes)

    return getattr_, dir_
