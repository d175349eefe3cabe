"""The dataset card (README.md): YAML header for the Hub and ``datasets``, body from cards/."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import quote

import yaml

from builder.errors import BuilderError
from builder.fileio import json_bytes, write_bytes_atomic
from builder.licenses import card_license
from builder.manifest import generator_of
from builder.metrics import figure_texts, upgrade_figures
from builder.paths import bundled_dir
from builder.writers.base import ShardSchema, attributes_of

log = logging.getLogger(__name__)

#: score results shown in the card's leaderboard; kept beside the card so a rebuild keeps them
LEADERBOARD_FILE = "leaderboard.json"
HUB_URL = "https://huggingface.co/datasets"

CARD_TEMPLATE = "benchmark.md.jinja"
METHOD_CITATION = """@inproceedings{zhang2024foundation,
  title     = {Foundation Model-oriented Robustness: Robust Image Model Evaluation with Pretrained Models},
  author    = {Zhang, Peiyan and Liu, Haoyang and Li, Chaozhuo and Xie, Xing and Kim, Sunghun and Wang, Haohan},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024},
  note      = {arXiv:2308.10632}
}"""


#: the output format the card's ``configs`` point ``datasets.load_dataset`` at; a tar-only build's
#: ``configs`` point at its tars (datasets reads them with its webdataset builder)
HUB_FORMAT = "parquet"


def has_hub_format(manifest: dict[str, Any]) -> bool:
    """Whether the build wrote Parquet, the format ``datasets`` loads best (its configs' then)."""
    return config_extension(manifest) == HUB_FORMAT


def config_extension(manifest: dict[str, Any]) -> Optional[str]:
    """The extension of the shards a card's ``configs`` list: Parquet when written, else the tars.
    A tar-only card without ``configs`` had the Hub (and ``load_dataset(repo)``) merge every
    config's samples into one split, keys repeated."""
    formats = manifest["recipe"].get("output", {}).get("formats", (HUB_FORMAT,))
    return HUB_FORMAT if HUB_FORMAT in formats else "tar" if "webdataset" in formats else None


def card_header(manifest: dict[str, Any], schema: ShardSchema) -> dict[str, Any]:
    split, extension = manifest["split"], config_extension(manifest)
    configs, infos = [], []
    for position, (name, config) in enumerate(manifest["configs"].items()):
        entry: dict[str, Any] = {"config_name": name, "data_files": [{"split": split, "path": f"{name}/{split}-*.{extension}"}]}
        if position == 0:
            entry["default"] = True
        configs.append(entry)
        infos.append(
            {
                "config_name": name,
                "features": config_schema(manifest, schema, name).features_yaml(),
                "splits": [{"name": split, "num_bytes": _parquet_bytes(config), "num_examples": config["num_samples"]}],
            }
        )
    header = {
        "pretty_name": f"{manifest['recipe']['name']} — FMR robustness benchmark",
        **card_license(manifest["recipe"]["license"]),
        "task_categories": ["image-classification"],
        "tags": ["robustness", "benchmark", "fmr", "vqgan", "clip", "counterfactual"],
    }
    if extension == HUB_FORMAT:
        return {**header, "configs": configs, "dataset_info": infos}
    return {**header, "configs": configs} if extension is not None else header  # the tars' columns are webdataset's


def _parquet_bytes(config: dict[str, Any]) -> int:
    return sum(shard["files"].get(HUB_FORMAT, {}).get("bytes", 0) for shard in config["shards"])


def schema_of(manifest: dict[str, Any], config: Optional[str] = None) -> ShardSchema:
    """The shard schema a manifest's ``config`` (default: its first) was written with."""
    output = manifest["recipe"]["output"]
    attributes = attributes_of(generator_of(manifest, config or next(iter(manifest["configs"]))))
    return ShardSchema(tuple(manifest["class_names"]), output["image_encoding"], output["keep_originals"], attributes)


def config_schema(manifest: dict[str, Any], schema: ShardSchema, config: str) -> ShardSchema:
    """``schema`` with the attribute columns of ``config``'s own generator (several-generator
    builds: only the attributes generator's configs have them)."""
    if not manifest["configs"][config].get("generator"):
        return schema
    return dataclasses.replace(schema, attributes=attributes_of(generator_of(manifest, config)))


def render_card(
    manifest: dict[str, Any],
    schema: ShardSchema,
    leaderboard: Sequence[dict[str, Any]] = (),
    repo_id: Optional[str] = None,
    revision: str = "main",
) -> str:
    """The card's text; ``repo_id`` (and ``revision``) make the snippets point at the Hub repo."""
    import jinja2

    from builder.leaderboard import leaderboard_markdown

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(bundled_dir("cards"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    header = yaml.safe_dump(card_header(manifest, schema), sort_keys=False, allow_unicode=True)
    one_generator = manifest["recipe"].get("generator") or {}  # a several-generator build has none
    rows = []
    for name, config in manifest["configs"].items():
        spec = " ".join(str(config["reference_model"]["model"]).split()).replace("`", "'")  # stays inside its code span
        generator = str((config.get("generator") or {}).get("name", ""))
        figures = upgrade_figures(config)
        rows.append({"name": name, "num_non_finite": 0, **figures, "spec": spec, "generator": generator, "text": figure_texts(figures)})
    return environment.get_template(CARD_TEMPLATE).render(
        header=header,
        manifest=manifest,
        built_with=manifest.get("built_with") or {},
        recipe=manifest["recipe"],
        generators=manifest["recipe"].get("generators") or {},
        generator=one_generator,
        generator_kind=one_generator.get("kind", "unknown"),
        rows=rows,
        method_citation=METHOD_CITATION,
        image_format=schema.image_format,
        keep_originals=schema.keep_originals,
        with_parquet=has_hub_format(manifest),
        with_configs=config_extension(manifest) is not None,
        with_tar=all("webdataset" in shard["files"] for config in manifest["configs"].values() for shard in config["shards"]),
        leaderboard=leaderboard_markdown(list(leaderboard), for_card=True) if leaderboard else "",
        location=repo_id or "<this repo or dir>",
        revision_argument=f', revision="{revision}"' if repo_id and revision != "main" else "",
        shard_prefix=f"{HUB_URL}/{repo_id}/resolve/{quote(revision, safe='')}/" if repo_id else "",
        files_prefix=f"hf://datasets/{repo_id}{'' if revision == 'main' else '@' + quote(revision, safe='')}/" if repo_id else "",
    )


def read_leaderboard(root: Path, benchmark_id: str) -> list[dict[str, Any]]:
    """Stored score rows of this very benchmark (rows of an earlier build are dropped), as
    published (:func:`builder.leaderboard.public_row`: a file written before rows were made
    public is read as if it had been)."""
    path = root / LEADERBOARD_FILE
    if not path.is_file():
        return []
    from builder.leaderboard import checked_rows, public_row
    from builder.manifest import load_json_bounded

    rows = [public_row(row) for row in checked_rows(load_json_bounded(path, str(path), max_bytes=64 << 20), str(path))]
    kept = [row for row in rows if row.get("benchmark_id") == benchmark_id]
    if len(kept) < len(rows):
        log.warning("%s: dropped %d result(s) of another build of this benchmark", path, len(rows) - len(kept))
    return kept


def merged_results(root: Path, benchmark_id: str, results: Sequence[Path]) -> list[dict[str, Any]]:
    """The stored leaderboard with ``score --json`` files merged in (nothing is written); a
    result of another benchmark is an error."""
    from builder.leaderboard import load_results, public_row, row_identity, without_predictions

    rows = {row_identity(row): without_predictions(row) for row in read_leaderboard(root, benchmark_id)}
    for path in results:
        for row in load_results([path]):
            if row.get("mode") == "dynamic":
                raise BuilderError(f"result file {path}: '{row['name']}' is a dynamic score (a regenerated benchmark); give static results of this benchmark")
            if row.get("benchmark_id") != benchmark_id:
                raise BuilderError(
                    f"result file {path}: scored on benchmark {str(row.get('benchmark_id'))[:12]}…, not this one ({benchmark_id[:12]}…); "
                    "re-score with --benchmark pointing at this dir"
                )
            row = public_row(without_predictions(row))  # the card's leaderboard.json stays small, and names no local folder
            rows[row_identity(row)] = row
    return sorted(rows.values(), key=lambda r: (-r["fmr"], r["name"], r["config"]))


def card_files(root: Path, results: Sequence[Path] = (), repo_id: Optional[str] = None, revision: str = "main") -> dict[str, bytes]:
    """The bytes of ``README.md`` (rendered from the manifest, with the leaderboard) and, when
    ``results`` are added, of the merged ``leaderboard.json``; reads ``root``, writes nothing."""
    from builder.benchmark import read_manifest

    manifest = read_manifest(root)
    leaderboard = merged_results(root, manifest["id"], results) if results else read_leaderboard(root, manifest["id"])
    files = {"README.md": render_card(manifest, schema_of(manifest), leaderboard, repo_id, revision).encode("utf-8")}
    if results:
        files[LEADERBOARD_FILE] = json_bytes(leaderboard)
    return files


def write_card(root: Path, results: Sequence[Path] = (), repo_id: Optional[str] = None, revision: str = "main") -> Path:
    """(Re)write ``root/README.md`` from its manifest, with the leaderboard of ``results`` (kept
    in ``leaderboard.json``)."""
    return write_card_files(root, card_files(root, results, repo_id, revision))


def write_card_files(root: Path, files: dict[str, bytes]) -> Path:
    """Write what :func:`card_files` rendered: the leaderboard first, the card that shows it last.
    Never into a dir that is not the build's own (see :func:`card_write_problem`)."""
    problem = card_write_problem(root, files)
    if problem:
        raise BuilderError(f"{root} is {problem}: the card is not rewritten there; copy the dir first "
                           f"(`cp -rL {root} DEST`) and render the card in the copy")
    for name in sorted(files, key=lambda name: name == "README.md"):
        write_bytes_atomic(root / name, files[name])
    return root / "README.md"


def card_write_problem(root: Path, files: Iterable[str] = ("README.md",)) -> Optional[str]:
    """Why ``files`` must not be written into ``root`` (None if they may). A Hugging Face cache
    snapshot (``.../snapshots/<sha>/``, files linked into ``blobs/``) is the cache's view of a Hub
    commit: a card written there would be served as that commit's card. A linked file is not
    the dir's own either, and a read-only dir cannot take it."""
    base = Path(root).resolve()
    if base.parent.name == "snapshots" and (base.parent.parent / "blobs").is_dir():
        return "a Hugging Face cache snapshot"
    linked = sorted(name for name in files if (Path(root) / name).is_symlink())
    if linked:
        return f"a dir whose {', '.join(linked)} is a link (to {(Path(root) / linked[0]).resolve()})"
    if not os.access(base, os.W_OK):
        return "a read-only dir"
    return None


