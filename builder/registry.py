"""One registry class for every pluggable family (sources, generators, oracles, models, writers).

A new kind registers itself with a decorator, and its entry answers what the rest of the
program asks about it without building it (its config class, its offline checks, the weight
files it reads, how to train them); the engine and the CLI only ever look kinds up by name, so
adding one never touches them. Kinds outside this package come from plugins (``--plugin``,
the ``builder.plugins`` entry point group), never from a recipe.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar, Union

from builder.errors import BuilderError

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    """The most similar valid name, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return matches[0] if matches else None


#: past this many choices an error names the nearest few and how to list them all (timm has
#: over a thousand models: a line listing every one is no longer read)
MAX_LISTED_CHOICES = 30


def unknown_name_message(family: str, name: str, choices: list[str], listing: Optional[str] = None) -> str:
    """``unknown <family> '<name>'; did you mean ...? choices: ...``; a long list cut to the
    names nearest ``name`` and ``listing``, the call that lists them all."""
    hint = closest(name, choices)
    did_you_mean = f"did you mean '{hint}'? " if hint else ""
    if len(choices) <= MAX_LISTED_CHOICES:
        return f"unknown {family} '{name}'; {did_you_mean}choices: {', '.join(sorted(choices))}"
    near = difflib.get_close_matches(name, choices, n=5, cutoff=0.4) or sorted(choices)[:5]
    return f"unknown {family} '{name}'; {did_you_mean}{len(choices)} choices, nearest: {', '.join(near)}" + (
        f"; all of them: {listing}" if listing else "")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered kind, queryable as data (like timm's pretrained configs)."""

    name: str
    factory: T
    config: Any  # the pydantic config class of the kind's recipe section, or None
    description: str
    #: building this kind imports or calls code named in its spec: a spec read from data (a
    #: manifest, a download) may only use it with the user's explicit trust; a callable
    #: (config) -> bool when only some configs do (``hf:`` with ``trust_remote_code``)
    runs_code: Union[bool, Callable[[Any], bool]] = False
    #: (config, PreflightContext, where) -> the offline checks ``run --dry-run`` prints
    #: (:mod:`builder.preflight`); None: the kind has none
    preflight: Optional[Callable[..., list[Any]]] = None
    #: (config, where) -> the weight files it reads (:class:`builder.preflight.Weights`)
    weights: Optional[Callable[..., list[Any]]] = None
    #: (config, ComponentContext, out path) -> None: trains the weights its ``train`` block makes
    trainer: Optional[Callable[..., None]] = None
    #: a classifier scheme whose models name their labels, so a spec's ``label_map`` can pick
    #: outputs by name (the others' outputs are taken in the benchmark's class order)
    names_labels: bool = False
    #: a classifier scheme whose networks a spec's ``train`` block can train from scratch
    trainable: bool = True


class Registry(Generic[T]):
    """Name -> factory (and, optionally, the pydantic config class its recipe section uses).

    ``discover`` names the package whose modules register the built-in kinds: they are imported
    on the first lookup, so a family is complete whoever asks first (the recipe parser, the
    CLI, a test) and nothing has to import every kind module up front. A kind defined
    elsewhere registers itself when its module is imported.
    """

    def __init__(self, family: str, *, discover: str | None = None) -> None:
        self.family = family
        self._entries: dict[str, Entry[T]] = {}
        self._discover = discover

    def register(
        self,
        name: str,
        *,
        config: Any | None = None,
        description: str = "",
        runs_code: Union[bool, Callable[[Any], bool]] = False,
        preflight: Optional[Callable[..., list[Any]]] = None,
        weights: Optional[Callable[..., list[Any]]] = None,
        trainer: Optional[Callable[..., None]] = None,
        names_labels: bool = False,
        trainable: bool = True,
    ) -> Callable[[T], T]:
        """Register the decorated factory as kind ``name``, with what it answers about itself."""

        def decorate(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} '{name}' is registered twice")
            docstring = (getattr(factory, "__doc__", None) or "").strip().splitlines()
            summary = description or next(iter(docstring), "")
            self._entries[name] = Entry(name, factory, config, summary, runs_code, preflight, weights, trainer, names_labels, trainable)
            return factory

        return decorate

    def _load(self) -> None:
        package, self._discover = self._discover, None  # once; lookups during the imports see what is there
        if package is not None:
            module = importlib.import_module(package)
            for info in pkgutil.iter_modules(module.__path__):
                importlib.import_module(f"{package}.{info.name}")
            load_plugins()

    def entry(self, name: str) -> Entry[T]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise BuilderError(unknown_name_message(self.family, name, self.names())) from None

    def get(self, name: str) -> T:
        return self.entry(name).factory

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())


#: the entry point group of installed packages whose modules register kinds of their own
PLUGIN_GROUP = "builder.plugins"
_loaded_plugins: set[str] = set()


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import the modules that register kinds beyond the built-in ones: every ``builder.plugins``
    entry point installed, then ``modules`` (``--plugin``); each once. Only the user names
    plugins (by installing them or on the command line): a recipe never does, since a recipe
    may be a download. Returns the modules imported now."""
    from importlib.metadata import entry_points

    named = [(point.value.partition(":")[0], f"entry point '{point.name}' ({PLUGIN_GROUP})") for point in entry_points(group=PLUGIN_GROUP)]
    named += [(module, f"--plugin {module}") for module in modules]
    imported = []
    for module, origin in named:
        if module in _loaded_plugins:
            continue
        _loaded_plugins.add(module)  # first: a plugin that looks kinds up while importing sees no loop
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - the plugin's own code failed while importing
            _loaded_plugins.discard(module)  # never handed on to workers
            raise BuilderError(_plugin_failure(module, origin, error)) from error
        imported.append(module)
    return imported


def _plugin_failure(module: str, origin: str, error: Exception) -> str:
    """One line for a plugin that cannot be imported: not there, or its own code failed."""
    if isinstance(error, ModuleNotFoundError) and error.name is not None and (module + ".").startswith(error.name + "."):
        return f"{origin}: no module named '{module}'; install it or put its directory on PYTHONPATH"
    return f"{origin}: importing {module} failed: {type(error).__name__}: {error}; fix the plugin"


def loaded_plugins() -> tuple[str, ...]:
    """The plugin modules imported so far, for worker processes to import too."""
    return tuple(sorted(_loaded_plugins))


#: the pluggable families; each finds its built-in kinds in the modules of its package
SOURCES: Registry[Any] = Registry("source kind", discover="builder.sources")
GENERATORS: Registry[Any] = Registry("generator kind", discover="builder.components")
ORACLES: Registry[Any] = Registry("oracle kind", discover="builder.components")
MODELS: Registry[Any] = Registry("model scheme", discover="builder.components")
WRITERS: Registry[Any] = Registry("output format", discover="builder.writers")
