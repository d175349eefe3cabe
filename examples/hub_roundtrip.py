"""A smoke test of the consumer's path against the real Hub: publish a built benchmark, read it back.

    HF_TOKEN=hf_... python examples/hub_roundtrip.py out/digits-demo my-org/fmr-digits-smoke [--revision v1] [--public]

It publishes DIR to the dataset repo (private unless ``--public``; re-running resumes and sends
only what changed), then loads every config back with ``datasets.load_dataset`` (downloaded and
streaming) and compares each record with the local Parquet shards (image bytes, labels, every
column), and runs ``build-benchmark verify`` on the repo id (the Hub's bytes against the
manifest's sha256s). The tests do the same against a local stand-in (tests/test_hub_roundtrip.py);
this script is for a real Hub and never runs in the tests.

Without a token or without network it says so and exits 0 (skipped); a mismatch exits 1.
``HF_ENDPOINT`` is followed, so it also runs against a private Hub.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMAGE_COLUMNS = ("image", "original_image")


def skip_reason() -> str | None:
    """Why the round trip cannot run here (no token, no network), or None."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not get_token():
        return "no Hugging Face token: set HF_TOKEN or run 'hf auth login'"
    try:
        HfApi().whoami()
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code in (401, 403):
            sys.exit(f"error: the Hub refused the token (HTTP {error.response.status_code}); set HF_TOKEN to a valid write token")
        return f"the Hub answered {type(error).__name__}"
    except Exception as error:  # noqa: BLE001 - any connection failure means: no network here
        return f"cannot reach the Hub ({type(error).__name__})"
    return None


def local_records(root: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    paths = [shard["files"]["parquet"]["path"] for shard in config["shards"] if "parquet" in shard["files"]]
    return [row for path in paths for row in pq.read_table(root / path).to_pylist()]


def hub_records(ds: Any) -> list[dict[str, Any]]:
    """Records as ``datasets`` gives them, images left as their stored bytes."""
    from datasets import Image

    for column in IMAGE_COLUMNS:
        ds = ds.cast_column(column, Image(decode=False))
    return list(ds)


def first_difference(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> str | None:
    if len(expected) != len(got):
        return f"{len(got)} records, expected {len(expected)}"
    for index, (want, have) in enumerate(zip(expected, got, strict=False)):
        for column in want:
            if want[column] != have.get(column):
                return f"record {index} (key {want.get('key')}): column '{column}' differs"
    return None


def round_trip(root: Path, repo_id: str, revision: str | None, private: bool) -> int:
    from datasets import load_dataset

    from builder.errors import BuilderError
    from builder.publish import publish
    from builder.verify import format_report, verify_benchmark

    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    try:
        result = publish(root, repo_id, private=private, revision=revision)
        print(f"published {root} to {result.url}: {len(result.sent)} file(s) sent, {len(result.unchanged)} unchanged")
        report = verify_benchmark(repo_id, revision=revision)
    except BuilderError as error:
        print(f"error: {error}")
        return 1
    print(format_report(report))
    failures = 0 if report.ok else 1
    for name, config in manifest["configs"].items():
        expected = local_records(root, config)
        for streaming in (False, True):
            ds = load_dataset(repo_id, name, split=manifest["split"], revision=revision, streaming=streaming)
            problem = first_difference(expected, hub_records(ds))
            how = "streaming" if streaming else "downloaded"
            print(f"config {name} ({how}): " + (problem or f"all {len(expected)} records equal to the local build"))
            failures += problem is not None
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark_dir", type=Path, help="A built benchmark dir (build-benchmark run).")
    parser.add_argument("repo_id", help="The dataset repo to publish to, org/name (created if needed).")
    parser.add_argument("--revision", default=None, help="Branch to publish to and read back (default: main).")
    parser.add_argument("--public", action="store_true", help="Create the repo public (default: private).")
    args = parser.parse_args()
    if not (args.benchmark_dir / "manifest.json").is_file():
        print(f"error: {args.benchmark_dir} is not a built benchmark (no manifest.json); give a dir written by 'build-benchmark run'")
        return 2
    reason = skip_reason()
    if reason is not None:
        print(f"skipped: {reason}; nothing was published")
        return 0
    return round_trip(args.benchmark_dir, args.repo_id, args.revision, private=not args.public)


if __name__ == "__main__":
    sys.exit(main())
