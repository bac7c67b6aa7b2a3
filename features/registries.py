"""The one registry type: named entries, one lookup, one "unknown X" message.

Every table of named things in tlearn (backbones, runtimes, classifiers, engines,
datasets to download, EfficientNet-Lite variants) is a :class:`Registry`, so a user
who mistypes any name gets the same answer: what was not found, every name that
is, and the closest ones (``unknown backbone 'vgg61'; choose one of: ...; did you
mean vgg16?``). Command-line choices are read from the same tables.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from features.errors import UserInputError

T = TypeVar("T")


class UnknownNameError(UserInputError, KeyError):
    """A name that is not registered: a user mistake (one line), and a ``KeyError`` to mappings."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_choice(what: str, value: object, allowed: Iterable[str]) -> UnknownNameError:
    """The error for ``value`` not among ``allowed``, naming all of them and the closest."""
    names = [str(name) for name in allowed]
    close = difflib.get_close_matches(str(value), names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown {what} {value!r}; choose one of: {', '.join(names)}{hint}")


def check_choice(what: str, value: object, allowed: Iterable[str]) -> None:
    """Raise :func:`unknown_choice`'s error unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise unknown_choice(what, value, allowed)


class Registry(Mapping[str, T], Generic[T]):
    """Entries by name, in the order registered: a mapping with one way in, :meth:`register`.

    ``registry[name]`` raises :class:`UnknownNameError` for an unknown name (a
    ``KeyError``, so ``registry.get(name)`` and ``name in registry`` work as for a dict).

    Parameters
    ----------
    what : str
        What an entry is, in the error message (``"backbone"``, ``"runtime"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` and return it; a name is registered once."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """The registered names, in the order registered."""
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises :class:`UnknownNameError`."""
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_choice(self.what, name, self._entries) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
