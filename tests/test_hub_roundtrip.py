"""The consumer's path from the Hub, end to end against the local stand-in (tests/hub_stub.py).

``publish`` the tiny build with the real CLI, then read it back the way the card and the README
say: ``datasets.load_dataset`` (also streaming, a ``--revision`` branch, a private repo),
``webdataset`` on the card's URLs, and ``score`` / ``verify`` on the Hub id. What comes back
must be the local build, byte for byte. No test reaches the network: only 127.0.0.1 is allowed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from builder.cli import main

from hub_stub import HubStub, use_hub_stub

REPO = "org/tiny"
README = Path(__file__).resolve().parent.parent / "README.md"
TINY_MODELS = Path(__file__).parent / "tiny_models.py"
IMAGE_COLUMNS = ("image", "original_image")


@pytest.fixture
def token() -> str:
    return f"hf_{secrets.token_hex(20)}"


@pytest.fixture
def hub(token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStub]:
    """The stand-in, with huggingface_hub and datasets pointed at it and every other address refused."""
    stub = HubStub(token).start()
    use_hub_stub(monkeypatch, stub, tmp_path / "hf-home", token=token)
    real_connect = socket.socket.connect

    def loopback_only(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"network disabled by the test: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    yield stub
    stub.stop()


# ----------------------------------------------------------------------------- helpers


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["-q", *args])


def publish(built: Path, *args: str) -> None:
    result = cli("publish", str(built), "--repo-id", REPO, *args)
    assert result.exit_code == 0, result.output


def one_line_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def shard_paths(root: Path, config: str, fmt: str) -> list[str]:
    return [shard["files"][fmt]["path"] for shard in manifest(root)["configs"][config]["shards"]]


def local_records(root: Path, config: str) -> list[dict[str, Any]]:
    """Every record of the local build, in shard order, images as their stored bytes."""
    return [row for path in shard_paths(root, config, "parquet") for row in pq.read_table(root / path).to_pylist()]


def hub_records(ds: Any) -> list[dict[str, Any]]:
    """Every record ``datasets`` gives (a Dataset or an IterableDataset), images left undecoded."""
    from datasets import Image

    for column in IMAGE_COLUMNS:
        ds = ds.cast_column(column, Image(decode=False))
    return list(ds)


def tar_members(paths: list[Path]) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for path in paths:
        with tarfile.open(path) as archive:
            for member in archive:
                members[member.name] = archive.extractfile(member).read()  # type: ignore[union-attr]
    return members


def card_snippets(card: str) -> dict[str, list[str]]:
    """The card's code a consumer copies: its load_dataset lines, its webdataset line, the webdataset-builder call."""
    lines = [line.strip() for line in card.splitlines()]
    return {
        "datasets": [line for line in lines if line.startswith("ds = load_dataset(")],
        "webdataset": [line for line in lines if line.startswith("ds = wds.WebDataset(")],
        "builder": re.findall(r'`(load_dataset\("webdataset".*?)`', card),
    }


def readme_block(section: str, language: str) -> str:
    """The first ``language`` code block of README section ``section``."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return body.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def run_lines(lines: list[str], namespace: dict[str, Any]) -> list[Any]:
    """Execute snippet lines one by one; the value of ``ds`` after each line that assigns it."""
    values = []
    for line in lines:
        exec(line, namespace)  # noqa: S102 - the snippets under test
        if line.startswith("ds ="):
            values.append(namespace["ds"])
    return values


def resolved_gets(hub: HubStub) -> list[str]:
    return [path.split("/resolve/", 1)[1] for method, path in hub.requests if method == "GET" and "/resolve/" in path]


# ----------------------------------------------------------------------------- datasets


def test_the_cards_datasets_snippets_give_the_local_records(built: Path, hub: HubStub) -> None:
    """The card's two load_dataset lines, as published, give every record byte for byte."""
    from datasets import ClassLabel, IterableDataset, load_dataset

    publish(built)
    snippets = card_snippets(hub.files(REPO)["README.md"].decode())["datasets"]
    assert snippets == ['ds = load_dataset("org/tiny", name="cnn", split="test")',
                        'ds = load_dataset("org/tiny", name="cnn", split="test", streaming=True)']
    eager, streamed = run_lines(snippets, {"load_dataset": load_dataset})
    assert isinstance(streamed, IterableDataset)
    for config in manifest(built)["configs"]:  # one here; the card's snippets name the first
        expected = local_records(built, config)
        assert len(expected) == manifest(built)["configs"][config]["num_samples"] == eager.num_rows
        assert hub_records(eager) == expected
        assert hub_records(streamed) == expected
    label = eager.features["label"]
    assert isinstance(label, ClassLabel) and label.names == manifest(built)["class_names"]
    assert eager[0]["image"].size == (16, 16)  # decoded by default: a PIL image


def test_every_config_loads_from_the_hub(built: Path, hub: HubStub) -> None:
    """Each config of the manifest is a config of the Hub dataset (the card's YAML, resolved by the Hub's listing)."""
    from datasets import get_dataset_config_names, load_dataset

    publish(built)
    configs = list(manifest(built)["configs"])
    assert get_dataset_config_names(REPO) == configs
    for config in configs:
        ds = load_dataset(REPO, config, split="test")
        assert hub_records(ds) == local_records(built, config)


# ----------------------------------------------------------------------------- README, revisions


def test_the_readme_snippets_run_against_the_hub(built: Path, hub: HubStub) -> None:
    """README "Loading a benchmark", on this repo: main, streaming, the v1 branch of 'publish --revision v1', webdataset."""
    import webdataset as wds
    from datasets import load_dataset

    publish(built)
    publish(built, "--revision", "v1")
    main_sha, v1_sha = hub.commit_sha(REPO), hub.commit_sha(REPO, "v1")
    assert main_sha != v1_sha and 'revision="v1"' in hub.files(REPO, "v1")["README.md"].decode()
    block = readme_block("Loading a benchmark", "python")
    for placeholder in ("my-org/fmr-digits", 'name="vit"', "/vit/", 'revision="v1"', "https://huggingface.co"):
        assert placeholder in block, placeholder
    ours = (block.replace("my-org/fmr-digits", REPO).replace('name="vit"', 'name="cnn"').replace("/vit/", "/cnn/")
            .replace("https://huggingface.co", hub.url))
    lines = [line for line in ours.splitlines() if line.strip() and not line.startswith("#")]
    if shutil.which("curl") is None:  # webdataset opens http URLs with curl
        lines = [line for line in lines if "wds." not in line]
    hub.requests.clear()
    loaded = run_lines(lines, {"load_dataset": load_dataset, "wds": wds})
    expected = local_records(built, "cnn")
    assert len(loaded) == (3 if shutil.which("curl") is None else 4)
    assert [hub_records(ds) for ds in loaded[:3]] == [expected] * 3
    assert any(f"/resolve/{v1_sha}/cnn/" in path for _, path in hub.requests)  # revision="v1" read the branch
    for webdataset in loaded[3:]:
        assert [sample["__key__"] for sample in webdataset] == [row["key"] for row in expected]
    commands = readme_block("Publishing and verifying", "bash")
    assert "build-benchmark verify my-org/fmr-digits" in commands and "--revision v1" in commands
    for result in (cli("verify", REPO), cli("verify", REPO, "--revision", "v1")):
        assert result.exit_code == 0, result.output
    assert f"is commit {v1_sha}" in result.output and "is consistent" in result.output


# ----------------------------------------------------------------------------- webdataset


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset opens http and hf:// URLs with curl")
def test_the_cards_webdataset_snippets_read_every_sample(built: Path, hub: HubStub) -> None:
    """The card's tar URL pattern (resolve/<revision>/...) and its webdataset-builder call, against the stand-in."""
    import webdataset as wds
    from datasets import load_dataset

    publish(built)
    snippets = card_snippets(hub.files(REPO)["README.md"].decode())
    (line,) = snippets["webdataset"]
    assert "https://huggingface.co/datasets/org/tiny/resolve/main/cnn/test-{00000..00002}-of-00003.tar" in line
    (decoded,) = run_lines([line.replace("https://huggingface.co", hub.url)], {"wds": wds})
    samples = list(decoded)
    expected = local_records(built, "cnn")
    assert [s["__key__"] for s in samples] == [row["key"] for row in expected]
    assert [s["cls"] for s in samples] == [row["label"] for row in expected]
    assert [s["json"]["source_id"] for s in samples] == [row["source_id"] for row in expected]
    assert all(s["png"].size == (16, 16) for s in samples)
    url = re.search(r'WebDataset\("([^"]+)"', line).group(1).replace("https://huggingface.co", hub.url)  # type: ignore[union-attr]
    raw = {f"{s['__key__']}.{part}": s[part] for s in wds.WebDataset(url, shardshuffle=False) for part in ("png", "original.png", "cls", "json")}
    assert raw == tar_members([built / path for path in shard_paths(built, "cnn", "webdataset")])
    (builder_call,) = snippets["builder"]
    assert builder_call == 'load_dataset("webdataset", data_files={"test": "hf://datasets/org/tiny/cnn/*.tar"}, split="test")'
    ds = eval(builder_call, {"load_dataset": load_dataset})
    assert sorted(ds["__key__"]) == sorted(row["key"] for row in expected)


# ----------------------------------------------------------------------------- score and verify on the Hub id


def test_score_and_verify_work_on_the_hub_id(built: Path, hub: HubStub, tmp_path: Path) -> None:
    import torch

    from tiny_models import tiny_cnn

    publish(built)
    torch.manual_seed(0)
    torch.save(tiny_cnn(3).state_dict(), tmp_path / "w.pt")
    scores = {}
    for where in (str(built), REPO):
        out = tmp_path / f"{where.replace('/', '_')}.json"
        result = cli("score", "--benchmark", where, "--model", f"py:{TINY_MODELS}:tiny_cnn", "--checkpoint", str(tmp_path / "w.pt"),
                     "--workers", "0", "--bootstrap", "0", "--device", "cpu", "--json", str(out))
        assert result.exit_code == 0, result.output
        (row,) = json.loads(out.read_text())["results"]
        scores[where] = {key: value for key, value in row.items() if key != "benchmark"}
    assert scores[REPO] == scores[str(built)] and scores[REPO]["n"] == len(local_records(built, "cnn"))

    hub.requests.clear()
    verified = cli("verify", REPO, "--json", str(tmp_path / "report.json"))
    assert verified.exit_code == 0, verified.output
    sha = hub.commit_sha(REPO)
    assert f"verify: {REPO} (Hub dataset, revision main) is commit {sha}" in verified.output
    assert "is consistent: 1 config(s), 3 shard(s), 6 shard file(s)" in verified.output
    fetched = set(resolved_gets(hub))  # the parquet shards came with score; verify adds the rest
    assert fetched == {f"{sha}/{path}" for path in ["rejects.jsonl", *shard_paths(built, "cnn", "webdataset")]}
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True

    # what verify checks is the Hub's bytes: a shard replaced on the Hub fails its sha256
    tar = shard_paths(built, "cnn", "webdataset")[1]
    damaged = bytearray((built / tar).read_bytes())
    damaged[600] ^= 0xFF
    new_sha = hub.add_files(REPO, {tar: bytes(damaged)})
    failed = cli("verify", REPO)
    assert failed.exit_code == 1 and f"is commit {new_sha}" in failed.output
    assert f"{tar}: sha256 is " in failed.output and "the file changed since the build" in failed.output
    assert "verify org/nope (not a local dir, so a Hub dataset id): no dataset repo org/nope" in one_line_error(cli("verify", "org/nope"))
    assert "has no revision 'nope'" in one_line_error(cli("verify", REPO, "--revision", "nope"))
    hub.add_files("org/not-a-benchmark", {"README.md": b"# hello\n"})
    assert "has no manifest.json at revision main" in one_line_error(cli("verify", "org/not-a-benchmark"))
    assert "--revision applies to a Hub dataset id" in one_line_error(cli("verify", str(built), "--revision", "v1"))
    for not_an_id in ("./nowhere", "no/such/dir"):  # neither a dir nor a Hub id: today's error, and no request
        assert f"verify {Path(not_an_id)}: no such directory" in one_line_error(cli("verify", not_an_id))


def test_score_reads_the_revision_it_is_given(built: Path, hub: HubStub, tmp_path: Path) -> None:
    """'score --revision v1' scores the v1 branch, fetched at v1's commit, while main moved on;
    a --revision with no Hub id among the benchmarks would be ignored, so it is refused."""
    publish(built, "--revision", "v1")
    parquet = shard_paths(built, "cnn", "parquet")
    hub.add_files(REPO, {parquet[0]: b"not parquet any more"})  # main moves on; v1 keeps the build
    main_sha, v1_sha = hub.commit_sha(REPO), hub.commit_sha(REPO, "v1")
    score = ["score", "--benchmark", REPO, "--model", f"py:{TINY_MODELS}:tiny_cnn", "--workers", "0", "--bootstrap", "0", "--device", "cpu"]
    hub.requests.clear()
    out = tmp_path / "v1.json"
    result = cli(*score, "--revision", "v1", "--json", str(out))
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["results"]
    assert row["benchmark_id"] == manifest(built)["id"] and row["n"] == len(local_records(built, "cnn"))
    fetched = resolved_gets(hub)
    assert f"{v1_sha}/{parquet[0]}" in fetched and not any(path.startswith(main_sha) for path in fetched)
    assert "has no revision 'nope'" in one_line_error(cli(*score, "--revision", "nope"))
    line = one_line_error(cli(*[str(built) if arg == REPO else arg for arg in score], "--revision", "v1"))
    assert "--revision v1 applies to Hub dataset ids (org/name), and no --benchmark is one" in line


def test_a_webdataset_source_reads_shards_of_a_hub_dataset(hub: HubStub, tmp_path: Path) -> None:
    """'urls: hf://datasets/org/repo[@revision]/...' (huggingface_hub's fsspec form, as webdataset
    users write it) fetches each shard through the HF cache, with the token; the dry run finds
    them offline; a wrong file, repo or revision is one line."""
    from helpers import BLUE, GREEN, RED, make_source, write_shard

    from builder.checkpoints import ResolveContext, find_location
    from builder.errors import CheckpointError
    from builder.sources.decode import load_rgb

    for index, samples in enumerate([[("a", RED, 0), ("b", GREEN, 1)], [("c", BLUE, 1)]]):
        write_shard(tmp_path / f"s-{index}.tar", samples)
    hub.add_files("org/shards", {f"val/s-{i}.tar": (tmp_path / f"s-{i}.tar").read_bytes() for i in range(2)})
    hub.add_files("org/shards", {"val/s-0.tar": (tmp_path / "s-1.tar").read_bytes()}, branch="v1")
    ctx = ResolveContext(tmp_path, tmp_path / "cache")
    url = "hf://datasets/org/shards/val/s-{0..1}.tar"
    first = "hf://datasets/org/shards/val/s-0.tar"
    assert "downloaded from the Hub on the first run" in find_location(first, ctx).how
    source = make_source({"kind": "webdataset", "urls": url, "class_names": ["x", "y"]}, tmp_path)
    items = list(source.items(0, len(source)))
    assert [item.source_id for item in items] == ["s-0.tar/a", "s-0.tar/b", "s-1.tar/c"] and [item.label for item in items] == [0, 1, 1]
    assert [tuple(load_rgb(item.load, 2)[0, 0]) for item in items] == [RED, GREEN, BLUE]
    assert find_location(first, ctx).how == "in the HF cache"
    globbed = make_source({"kind": "webdataset", "urls": "hf://datasets/org/shards/val/s-*.tar", "class_names": ["x", "y"]}, tmp_path)
    assert [item.source_id for item in globbed.items(0, 9)] == [item.source_id for item in items]  # listed on the Hub
    branch = make_source({"kind": "webdataset", "urls": "hf://datasets/org/shards@v1/val/s-0.tar", "class_names": ["x", "y"]}, tmp_path)
    assert [item.source_id for item in branch.items(0, 5)] == ["s-0.tar/c"]
    for wrong, fragment in (("hf://datasets/org/shards/val/s-9.tar", "org/shards has no file val/s-9.tar"),
                            ("hf://datasets/org/nope/val/s-0.tar", "no dataset repo org/nope on the Hub, or it is gated or private"),
                            ("hf://datasets/org/shards@v9/val/s-0.tar", "org/shards has no revision 'v9'"),
                            ("hf://datasets/org/shards", "expected hf://datasets/org/repo[@revision]/path/in/repo")):
        with pytest.raises(CheckpointError) as caught:
            make_source({"kind": "webdataset", "urls": wrong, "class_names": ["x", "y"]}, tmp_path)
        assert fragment in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_an_hf_url_of_a_benchmark_reads_like_its_hub_id(built: Path, hub: HubStub, tmp_path: Path) -> None:
    """'hf://datasets/org/name[@rev]' (huggingface_hub's fsspec form) is read as 'org/name' is: at
    one commit, only the files a reader needs (not a mirror of the whole repo)."""
    publish(built)
    publish(built, "--revision", "v1")
    score = ["score", "--model", f"py:{TINY_MODELS}:tiny_cnn", "--workers", "0", "--bootstrap", "0", "--device", "cpu"]
    rows, fetched = {}, {}
    for where in (f"hf://datasets/{REPO}", REPO):  # the URL first: the HF cache is empty then
        hub.requests.clear()
        result = cli(*score, "--benchmark", where, "--json", str(tmp_path / "r.json"))
        assert result.exit_code == 0, result.output
        (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
        rows[where] = {key: value for key, value in row.items() if key != "benchmark"}
        fetched[where] = sorted(resolved_gets(hub))
    assert rows[REPO] == rows[f"hf://datasets/{REPO}"]
    parquet = shard_paths(built, "cnn", "parquet")
    assert {path.split("/", 1)[1] for path in fetched[f"hf://datasets/{REPO}"]} >= set(parquet)
    assert not any(path.endswith(".tar") for path in fetched[f"hf://datasets/{REPO}"])  # not a mirror of the whole repo
    v1_sha = hub.commit_sha(REPO, "v1")
    hub.requests.clear()
    assert cli(*score, "--benchmark", f"hf://datasets/{REPO}@v1").exit_code == 0
    assert resolved_gets(hub) and all(path.startswith(v1_sha) for path in resolved_gets(hub))
    verified = cli("verify", f"hf://datasets/{REPO}@v1")
    assert verified.exit_code == 0 and f"is commit {v1_sha}" in verified.output, verified.output
    assert "names revision 'v1' and --revision says 'main'; give one" in one_line_error(
        cli(*score, "--benchmark", f"hf://datasets/{REPO}@v1", "--revision", "main"))
    assert "a benchmark on the Hub is a whole dataset repo" in one_line_error(cli(*score, "--benchmark", f"hf://datasets/{REPO}/cnn"))


def test_a_private_repo_needs_the_token(built: Path, hub: HubStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    publish(built, "--private")
    assert hub.repos[f"datasets/{REPO}"].private
    assert hub_records(load_dataset(REPO, "cnn", split="test")) == local_records(built, "cnn")  # HF_TOKEN is set
    if shutil.which("curl") is not None:  # webdataset's hf:// opener sends the token (its http one does not)
        import webdataset as wds

        url = "hf://datasets/org/tiny/cnn/test-{00000..00002}-of-00003.tar"
        assert len(list(wds.WebDataset(url, shardshuffle=False))) == len(local_records(built, "cnn"))

    monkeypatch.delenv("HF_TOKEN")
    use_hub_stub(monkeypatch, hub, tmp_path / "anonymous")  # an empty cache: nothing to fall back on
    with pytest.raises(DatasetNotFoundError):
        load_dataset(REPO, "cnn", split="test")
    for args in (["verify", REPO], ["score", "--benchmark", REPO, "--model", f"py:{TINY_MODELS}:tiny_cnn"]):
        line = one_line_error(cli(*args))
        assert "no dataset repo org/tiny on the Hub, or it is private" in line and "HF_TOKEN" in line
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    line = one_line_error(cli("verify", REPO))
    assert "refused the token (HTTP 401)" in line and "hf_not_the_right_one" not in line


# ----------------------------------------------------------------------------- re-publishing


def test_an_interrupted_republish_serves_one_build_whole_then_the_other(built: Path, hub: HubStub, tiny_recipe: Path,
                                                                         tmp_path: Path) -> None:
    """Build B (its config renamed, fewer samples) published over A and interrupted: readers
    get A whole (never B's manifest with A's shards or card); resumed, they get B whole, and A's
    config is gone from the repo (its shards would still load, and verify would flag them)."""
    import yaml
    from datasets import get_dataset_config_names, load_dataset

    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["reference_models"][0]["name"] = "cnn2"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(recipe))
    rebuilt = tmp_path / "b"
    result = cli("run", str(tmp_path / "b.yaml"), "--out", str(rebuilt), "--no-progress", "--device", "cpu", "--limit", "7",
                 "--set", "output.samples_per_shard=2")
    assert result.exit_code == 0, result.output
    publish(built)
    hub.fail_commit = hub.commit_attempts + 1
    assert "interrupted at step" in one_line_error(cli("publish", str(rebuilt), "--repo-id", REPO))
    assert json.loads(hub.files(REPO)["manifest.json"]) == manifest(built)
    assert hub_records(load_dataset(REPO, "cnn", split="test")) == local_records(built, "cnn")
    assert cli("verify", REPO).exit_code == 0

    hub.fail_commit = None
    publish(rebuilt)
    assert not any(path.startswith("cnn/") for path in hub.files(REPO)) and hub.files(REPO)["README.md"] == (rebuilt / "README.md").read_bytes()
    assert get_dataset_config_names(REPO) == ["cnn2"]
    assert hub_records(load_dataset(REPO, "cnn2", split="test")) == local_records(rebuilt, "cnn2")
    verified = cli("verify", REPO)
    assert verified.exit_code == 0, verified.output


def cached_snapshot(sha: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"datasets--{REPO.replace('/', '--')}" / "snapshots" / sha


def test_publishing_from_a_cache_snapshot_leaves_the_cache_as_it_was(built: Path, hub: HubStub) -> None:
    """A benchmark downloaded into the HF cache, published to another repo: the card rendered for
    that repo is sent from memory. The snapshot keeps its links into blobs/, so the cache still
    serves org/tiny's own card at that commit; `card` refuses to rewrite it in place."""
    from huggingface_hub import snapshot_download

    publish(built)
    snapshot = Path(snapshot_download(REPO, repo_type="dataset"))
    assert snapshot == cached_snapshot(hub.commit_sha(REPO))

    def links() -> dict[str, str]:
        return {p.relative_to(snapshot).as_posix(): os.readlink(p) for p in snapshot.rglob("*") if p.is_symlink()}

    before = links()
    assert "README.md" in before
    dry = cli("publish", str(snapshot), "--repo-id", "org/copy", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "is a Hugging Face cache snapshot: the card rendered for org/copy is sent from memory" in dry.output
    assert "(rendered, sent from memory)" in next(line for line in dry.output.splitlines() if line.strip().startswith("README.md"))
    result = cli("publish", str(snapshot), "--repo-id", "org/copy")
    assert result.exit_code == 0, result.output
    line = one_line_error(cli("card", str(snapshot), "--repo-id", "org/other"))
    assert f"{snapshot} is a Hugging Face cache snapshot: the card is not rewritten there" in line
    assert links() == before and (snapshot / "README.md").read_bytes() == hub.files(REPO)["README.md"]
    original, copy = hub.files(REPO), hub.files("org/copy")
    assert set(copy) == set(original) and all(copy[path] == original[path] for path in original if path != "README.md")
    card = copy["README.md"].decode()
    assert 'load_dataset("org/copy", name="cnn", split="test")' in card and REPO not in card


def test_a_partial_download_whose_card_links_files_it_lacks_is_refused(built: Path, hub: HubStub) -> None:
    """`verify` on a Hub id downloads only what it checks: no preview.png nor gallery.html, which
    the card links. Publishing that would put a card with broken links on the Hub."""
    publish(built)
    assert cli("verify", REPO).exit_code == 0
    snapshot = cached_snapshot(hub.commit_sha(REPO))
    assert not (snapshot / "preview.png").exists()
    for extra in ((), ("--dry-run",)):
        line = one_line_error(cli("publish", str(snapshot), "--repo-id", "org/copy", *extra))
        assert f"{snapshot}: the card links gallery.html and preview.png, which the dir lacks" in line, line
        assert "`hf download ORG/NAME gallery.html preview.png --repo-type dataset`" in line
    assert "datasets/org/copy" not in hub.repos


# ----------------------------------------------------------------------------- interrupted downloads


def test_an_interrupted_download_resumes_through_the_cache(built: Path, hub: HubStub) -> None:
    publish(built)
    sha = hub.commit_sha(REPO)
    parquet = shard_paths(built, "cnn", "parquet")
    score = ["score", "--benchmark", REPO, "--model", f"py:{TINY_MODELS}:tiny_cnn", "--workers", "0", "--bootstrap", "0", "--device", "cpu"]
    hub.fail_resolve_once[parquet[1]] = "500"
    line = one_line_error(cli(*score))
    assert "the Hub answered HTTP 500" in line and "run the same command again" in line
    from huggingface_hub import constants

    snapshot = Path(constants.HF_HUB_CACHE) / f"datasets--{REPO.replace('/', '--')}" / "snapshots" / sha
    arrived = {f"{sha}/{p.relative_to(snapshot).as_posix()}" for p in snapshot.rglob("*") if p.is_file()} if snapshot.is_dir() else set()
    hub.requests.clear()
    result = cli(*score)
    assert result.exit_code == 0, result.output
    second = resolved_gets(hub)
    # the failed file is fetched again, once; the files that arrived the first time (which ones
    # depends on the download threads) stay in the cache and are not fetched again
    assert f"{sha}/{parquet[1]}" in second and len(second) == len(set(second)) and not arrived & set(second), (second, arrived)

    # a connection lost mid-file: huggingface_hub asks for the rest (Range) and the bytes are whole
    tar = shard_paths(built, "cnn", "webdataset")[2]
    hub.fail_resolve_once[tar] = "truncate"
    hub.requests.clear()
    verified = cli("verify", REPO)
    assert verified.exit_code == 0, verified.output  # sha256 of every file checked against the manifest
    assert resolved_gets(hub).count(f"{sha}/{tar}") == 2 and not hub.fail_resolve_once


# ----------------------------------------------------------------------------- the stand-in's listings


def test_paths_info_and_expanded_listings(hub: HubStub) -> None:
    """What HfFileSystem asks when its listing cache misses, or for ``expand``: paths-info and tree?expand=true."""
    from huggingface_hub import HfApi, HfFileSystem
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    files = {"manifest.json": b"{}", "cnn/test-00000-of-00001.parquet": b"PAR1" * 10, "cnn/test-00000-of-00001.tar": b"\0" * 1024}
    sha = hub.add_files(REPO, files)
    api = HfApi()
    info = {entry.path: entry for entry in api.get_paths_info(REPO, ["manifest.json", "cnn", "nope.txt"], repo_type="dataset")}
    assert set(info) == {"manifest.json", "cnn"} and isinstance(info["cnn"], RepoFolder)
    assert isinstance(info["manifest.json"], RepoFile) and info["manifest.json"].size == 2 and info["manifest.json"].last_commit is None
    (shard,) = api.get_paths_info(REPO, "cnn/test-00000-of-00001.parquet", repo_type="dataset", expand=True)
    assert shard.lfs is not None and shard.lfs.size == 40 and shard.last_commit.oid == sha and shard.security.safe
    tree = list(api.list_repo_tree(REPO, "cnn", repo_type="dataset", expand=True))
    assert {entry.path for entry in tree} == {"cnn/test-00000-of-00001.parquet", "cnn/test-00000-of-00001.tar"}
    assert all(entry.last_commit is not None and entry.last_commit.oid == sha for entry in tree)
    fs = HfFileSystem()
    assert fs.info(f"datasets/{REPO}/cnn/test-00000-of-00001.tar", refresh=True)["size"] == 1024
    assert fs.modified(f"datasets/{REPO}/manifest.json").year >= 2024
    with fs.open(f"datasets/{REPO}/cnn/test-00000-of-00001.parquet", "rb") as handle:
        handle.seek(4)
        assert handle.read(4) == b"PAR1"
    assert ("POST", f"/api/datasets/{REPO}/paths-info/main") in hub.requests
    hub.add_files("org/secret", {"a.json": b"1"}, private=True)
    assert [entry.path for entry in api.get_paths_info("org/secret", ["a.json"], repo_type="dataset")] == ["a.json"]
    with pytest.raises(Exception) as anonymous:
        api.get_paths_info("org/secret", ["a.json"], repo_type="dataset", token=False)
    assert type(anonymous.value).__name__ == "RepositoryNotFoundError"

