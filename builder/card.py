"""The dataset card (README.md): YAML header for the Hub and ``datasets``, body from cards/."""

from __future__ import annotations

from typing import Any

import yaml

from builder.paths import bundled_dir
from builder.writers.base import ShardSchema

CARD_TEMPLATE = "benchmark.md.jinja"
METHOD_CITATION = """@inproceedings{zhang2024foundation,
  title     = {Foundation Model-oriented Robustness: Robust Image Model Evaluation with Pretrained Models},
  author    = {Zhang, Peiyan and Liu, Haoyang and Li, Chaozhuo and Xie, Xing and Kim, Sunghun and Wang, Haohan},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024},
  note      = {arXiv:2308.10632}
}"""


def card_header(manifest: dict[str, Any], schema: ShardSchema) -> dict[str, Any]:
    split = manifest["split"]
    configs, infos = [], []
    for position, (name, config) in enumerate(manifest["configs"].items()):
        entry: dict[str, Any] = {"config_name": name, "data_files": [{"split": split, "path": f"{name}/{split}-*.parquet"}]}
        if position == 0:
            entry["default"] = True
        configs.append(entry)
        infos.append(
            {
                "config_name": name,
                "features": schema.features_yaml(),
                "splits": [{"name": split, "num_bytes": _parquet_bytes(config), "num_examples": config["num_samples"]}],
            }
        )
    return {
        "pretty_name": f"{manifest['recipe']['name']} — FMR robustness benchmark",
        "license": manifest["recipe"]["license"],
        "task_categories": ["image-classification"],
        "tags": ["robustness", "benchmark", "fmr", "vqgan", "clip", "counterfactual"],
        "configs": configs,
        "dataset_info": infos,
    }


def _parquet_bytes(config: dict[str, Any]) -> int:
    return sum(shard["files"].get("parquet", {}).get("bytes", 0) for shard in config["shards"])


def render_card(manifest: dict[str, Any], schema: ShardSchema) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(bundled_dir("cards"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    header = yaml.safe_dump(card_header(manifest, schema), sort_keys=False, allow_unicode=True)
    rows = []
    for name, config in manifest["configs"].items():
        rows.append({"name": name, "spec": config["reference_model"]["model"], **config})
    return environment.get_template(CARD_TEMPLATE).render(
        header=header,
        manifest=manifest,
        recipe=manifest["recipe"],
        rows=rows,
        method_citation=METHOD_CITATION,
        image_format=schema.image_format,
        keep_originals=schema.keep_originals,
    )
