"""One registry class for every pluggable family (sources, generators, oracles, models, writers).

A new kind registers itself with a decorator; the engine and the CLI only ever look kinds
up by name, so adding one never touches them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from builder.errors import BuilderError

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    """The most similar valid name, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(family: str, name: str, choices: list[str]) -> str:
    hint = closest(name, choices)
    did_you_mean = f"did you mean '{hint}'? " if hint else ""
    return f"unknown {family} '{name}'; {did_you_mean}choices: {', '.join(sorted(choices))}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    config: Any | None
    description: str
    #: building this kind imports or calls code named in its spec: a spec read from data (a
    #: manifest, a download) may only use it with the user's explicit trust
    runs_code: bool = False


class Registry(Generic[T]):
    """Name -> factory (and, optionally, the pydantic config class its recipe section uses)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, config: Any | None = None, description: str = "", runs_code: bool = False
    ) -> Callable[[T], T]:
        def decorate(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} '{name}' is registered twice")
            docstring = (getattr(factory, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, factory, config, description or next(iter(docstring), ""), runs_code)
            return factory

        return decorate

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise BuilderError(unknown_name_message(self.family, name, self.names())) from None

    def get(self, name: str) -> T:
        return self.entry(name).factory

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())
