"""What a report reads: result rows (through the leaderboard's checked reading, so old files
load under today's names), the benchmarks they name, and each result's per-sample predictions
joined to the samples of its benchmark config.

Result files come from elsewhere: nothing in them is run, a path they name is only read, and a
benchmark is used only when its manifest id is the one the result was scored on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from builder.benchmark import Benchmark, BenchmarkError, open_benchmark
from builder.errors import BuilderError
from builder.leaderboard import SamplePredictions, load_results, result_files, row_identity, sample_predictions
from builder.manifest import generator_of
from builder.writers.base import ATTRIBUTES_FIELD, attributes_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """One result row (checked, today's names) and the file it was read from."""

    row: dict[str, Any]
    source: Path

    @property
    def label(self) -> str:
        return f"{self.row['name']} on {self.row['config']}"


def read_results(paths: Sequence[Path]) -> list[Result]:
    """Every result of ``paths`` (files, or dirs of ``score --models --out``); one line on a bad file."""
    every = [Result(row, path) for path in result_files(list(paths)) for row in load_results([path])]
    kept = {row_identity(result.row): result for result in every}  # a file given twice is one result, the last winning
    results = [result for result in every if kept[row_identity(result.row)] is result]
    if not results:
        raise BuilderError(f"no results in {', '.join(map(str, paths))}; give RESULT.json files written by 'build-benchmark score --json'")
    return results


@dataclass(frozen=True)
class Samples:
    """The columns of one benchmark config a report needs, in shard and key order."""

    bench: Benchmark
    config: str
    keys: list[str]
    labels: np.ndarray
    perturbed: np.ndarray
    steps: np.ndarray
    #: (shard, row) of each sample, where its images are read from
    places: list[tuple[int, int]]
    #: attribute name -> value of each sample (empty: the build records no attributes)
    attributes: dict[str, np.ndarray] = field(default_factory=dict)


def read_samples(bench: Benchmark, config: str) -> Samples:
    """Keys, labels, flags and attribute values through the reader of a format the config has."""
    names = attributes_of(generator_of(bench.manifest, config))
    columns = ["key", "label", "perturbed", "steps", *([ATTRIBUTES_FIELD] if names else [])]
    keys: list[str] = []
    labels: list[int] = []
    perturbed: list[bool] = []
    steps: list[int] = []
    places: list[tuple[int, int]] = []
    values: dict[str, list[float]] = {name: [] for name in names}
    for shard, part in enumerate(bench.read_columns(config, columns)):
        check_columns(bench, config, shard, part)
        keys += [str(key) for key in part["key"]]
        labels += part["label"]
        perturbed += part["perturbed"]
        steps += part["steps"]
        places += [(shard, row) for row in range(len(part["key"]))]
        for record in part.get(ATTRIBUTES_FIELD, []):
            for name in names:
                values[name].append(float((record or {}).get(name, np.nan)))
    return Samples(bench, config, keys, np.asarray(labels, dtype=np.int64), np.asarray(perturbed, dtype=bool),
                   np.asarray(steps, dtype=np.int64), places, {name: np.asarray(v, dtype=np.float64) for name, v in values.items()})


def check_columns(bench: Benchmark, config: str, shard: int, part: dict[str, list[Any]]) -> None:
    """ValueError naming the shard and sample whose label or steps is no integer (null, a
    string: a damaged download, since report never checks hashes); labels outside the classes
    are said by :func:`join`."""
    for column in ("label", "steps"):
        bad = next((row for row, value in enumerate(part[column]) if not isinstance(value, int) or isinstance(value, bool)), None)
        if bad is not None:
            _, files = bench.shards(config)  # the files read_columns read
            raise ValueError(f"{config}/{files[shard].name}: sample {str(part['key'][bad])[:80]!r} has {column} {repr(part[column][bad])[:40]}, "
                             "not an integer; run 'build-benchmark verify' on it")


@dataclass(frozen=True)
class Joined:
    """One result's predictions aligned with the samples of the config it was scored on."""

    samples: Samples
    pred_perturbed: np.ndarray
    pred_original: np.ndarray


#: a joined result, or why it could not be joined (a sentence for the page)
Joining = Union[Joined, str]


def join(samples: Samples, predictions: SamplePredictions) -> Joining:
    """Predictions in the samples' order; a reason when they name other samples or classes."""
    position = {key: index for index, key in enumerate(samples.keys)}
    n = len(samples.keys)
    if len(predictions.keys) != n or len(set(predictions.keys)) != n or any(key not in position for key in predictions.keys):
        return (f"its predictions list {len(predictions.keys)} samples that are not the {n} of config '{samples.config}' of "
                f"{samples.bench.location}; re-score on this build")
    order = np.asarray([position[key] for key in predictions.keys], dtype=np.int64)
    aligned = []
    for listed in (predictions.pred_perturbed, predictions.pred_original):
        values = np.empty(n, dtype=np.int64)
        values[order] = listed
        aligned.append(values)
    classes = len(samples.bench.class_names)
    if any(((values < 0) | (values >= classes)).any() for values in aligned):
        return f"its predictions name labels outside the {classes} classes of {samples.bench.location}; re-score on this build"
    if len(samples.labels) and not ((samples.labels >= 0) & (samples.labels < classes)).all():  # a damaged download
        return (f"config '{samples.config}' of {samples.bench.location} has samples labelled outside its {classes} classes; "
                "run 'build-benchmark verify' on it")
    return Joined(samples, aligned[0], aligned[1])


class Benchmarks:
    """The benchmarks results were scored on, by manifest id: those given (``--benchmark``),
    else a local dir a result names (as given, or beside its result file). Never a download."""

    def __init__(self, given: Sequence[Benchmark] = ()) -> None:
        self.by_id: dict[str, Benchmark] = {bench.id: bench for bench in given}
        self._opened: dict[Path, Union[Benchmark, str]] = {}
        self._samples: dict[tuple[str, str], Samples] = {}

    def find(self, result: Result) -> Union[Benchmark, str]:
        """The benchmark of ``result``, or why it is not available."""
        row = result.row
        if row["benchmark_id"] in self.by_id:
            return self.by_id[row["benchmark_id"]]
        location = row["benchmark"]
        if row.get("mode") == "dynamic" and location.startswith("dynamic:"):
            return "a dynamic score: its regenerated benchmark was not kept (score --dynamic --save DIR keeps it)"
        for candidate in dict.fromkeys((Path(location), result.source.parent / location)):
            if _is_dir(candidate):
                return self._open(candidate, row["benchmark_id"])
        if self.by_id:  # one was given, but another build: say so rather than ask for one
            given = ", ".join(f"{bench.location} ({bench.id[:12]}...)" for bench in self.by_id.values())
            return (f"it was scored on build {row['benchmark_id'][:12]}... of {location}, and --benchmark gave another build ({given}); "
                    "pass --benchmark with the build it was scored on, or re-score on this one")
        return f"its benchmark {location} is not available locally; pass --benchmark with a copy of it"

    def _open(self, path: Path, wanted: str) -> Union[Benchmark, str]:
        key = path.resolve()
        if key not in self._opened:
            try:
                self._opened[key] = open_benchmark(path)
            except BuilderError as error:
                self._opened[key] = f"its benchmark cannot be read ({error})"
        found = self._opened[key]
        if isinstance(found, Benchmark) and found.id != wanted:
            return (f"{path} is another build of its benchmark (manifest id {found.id[:12]}..., the result names {wanted[:12]}...); "
                    "re-score on this build, or pass --benchmark with the one it was scored on")
        return found

    def samples(self, bench: Benchmark, config: str) -> Union[Samples, str]:
        """The samples of one config, read once; why not when the config is missing or unreadable."""
        if config not in bench.manifest["configs"]:
            return f"{bench.location} has no config '{config}'"
        if (bench.id, config) not in self._samples:
            try:
                self._samples[bench.id, config] = read_samples(bench, config)
            except (BenchmarkError, OSError, ValueError, KeyError, TypeError) as error:
                return f"the samples of config '{config}' of {bench.location} cannot be read ({error})"
        return self._samples[bench.id, config]

    def resolve(self, result: Result) -> Joining:
        """``result`` joined to its samples, or why a per-sample section cannot show it."""
        try:
            predictions = sample_predictions(result.row, f"result file {result.source}")
        except BuilderError as error:
            return str(error)
        if predictions is None:
            return "scored before results kept per-sample predictions; re-score it with 'build-benchmark score --json'"
        bench = self.find(result)
        if isinstance(bench, str):
            return bench
        samples = self.samples(bench, result.row["config"])
        return samples if isinstance(samples, str) else join(samples, predictions)


def _is_dir(path: Path) -> bool:
    """Whether a path a result names is a directory; False for one no file system accepts (a NUL
    byte, a name too long): result files are data from elsewhere."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def open_given(locations: Sequence[str], *, cache_dir: Optional[Path] = None, storage_options: Sequence[tuple[str, str]] = ()) -> list[Benchmark]:
    """The benchmarks named with ``--benchmark`` (a dir, a Hub id or a URL): an error names the bad one."""
    return [open_benchmark(location, cache_dir=cache_dir, storage_options=storage_options) for location in locations]
