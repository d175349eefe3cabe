"""Downloads from the local Hub stand-in (tests/hub_stub.py) through huggingface_hub's real client code."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hub_stub import HubStub

REPO = "org/bench"
PARQUET = "cfg/test-00000-of-00001.parquet"
TAR = "cfg/test-00000-of-00001.tar"
ALLOW = ["manifest.json", "*/*.parquet", "README.md"]


def parquet_bytes(labels: list[int]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"label": labels, "name": [f"s{i}" for i in labels]}), sink)
    return sink.getvalue().to_pybytes()


def tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("0.png")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"\x89PNG"))
    return buffer.getvalue()


def seed_files(version: int = 1) -> dict[str, bytes]:
    card = "---\nconfigs:\n- config_name: cfg\n  data_files:\n  - split: test\n    path: cfg/test-*.parquet\n---\n# bench\n"
    return {
        "manifest.json": json.dumps({"version": version, "complete": True}).encode(),
        "README.md": card.encode(),
        PARQUET: parquet_bytes(list(range(3 * version))),
        TAR: tar_bytes(),
    }


def tree(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def hub(reading_hub: HubStub) -> HubStub:
    return reading_hub


def download(repo_id: str = REPO, allow_patterns: list[str] = ALLOW, **kwargs: Any) -> Path:
    """What a consumer of a published benchmark does (builder.benchmark)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=allow_patterns, **kwargs))


def test_snapshot_download_gets_the_allowed_files_byte_for_byte(hub: HubStub, tmp_path: Path) -> None:
    seeded = seed_files()
    sha = hub.add_files(REPO, seeded)
    assert hub.repos[f"datasets/{REPO}"].branches["main"][PARQUET][1]  # LFS, like a published shard
    root = download()
    assert root.parent.name == "snapshots" and root.name == sha and root.is_relative_to(tmp_path / "hf-home" / "hub")
    assert tree(root) == {path: seeded[path] for path in ("manifest.json", "README.md", PARQUET)}
    assert pq.read_table(root / PARQUET).column("label").to_pylist() == [0, 1, 2]
    assert not any(TAR in path for _, path in hub.requests)
    assert ("GET", f"/api/datasets/{REPO}/revision/main") in hub.requests
    assert ("HEAD", f"/datasets/{REPO}/resolve/{sha}/{PARQUET}") in hub.requests


def test_offline_second_call_returns_the_cached_snapshot(hub: HubStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub.add_files(REPO, seed_files())
    first = download()
    hub.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: the env var alone does nothing now
    assert download() == first
    assert hub.requests == []
    with pytest.raises(LocalEntryNotFoundError):
        download(cache_dir=tmp_path / "empty-cache")


def test_a_new_commit_gives_a_new_snapshot(hub: HubStub) -> None:
    first_sha = hub.add_files(REPO, seed_files(1))
    first = download()
    second_sha = hub.add_files(REPO, seed_files(2))
    assert second_sha != first_sha and hub.commit_sha(REPO) == second_sha
    second = download()
    assert second.name == second_sha and (second / "manifest.json").read_bytes() == seed_files(2)["manifest.json"]
    assert (first / "manifest.json").read_bytes() == seed_files(1)["manifest.json"]  # the old snapshot stays
    assert download(revision=first_sha) == first  # an older commit stays readable by its sha


def test_a_branch_revision(hub: HubStub) -> None:
    from huggingface_hub import hf_hub_download

    hub.add_files(REPO, seed_files(1))
    v1 = hub.add_files(REPO, seed_files(2), branch="v1")
    root = download(revision="v1")
    assert root.name == v1 and tree(root)["manifest.json"] == seed_files(2)["manifest.json"]
    assert tree(download())["manifest.json"] == seed_files(1)["manifest.json"]
    single = Path(hf_hub_download(REPO, PARQUET, repo_type="dataset", revision="v1"))
    assert single.read_bytes() == seed_files(2)[PARQUET] and single.parent.parent.name == v1


def test_single_file_listing_and_ranges(hub: HubStub) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    seeded = seed_files()
    sha = hub.add_files(REPO, seeded)
    path = Path(hf_hub_download(REPO, "manifest.json", repo_type="dataset", token=False))  # public: no token needed
    assert path.read_bytes() == seeded["manifest.json"] and path.parent.name == sha
    api = HfApi()
    assert api.list_repo_files(REPO, repo_type="dataset") == sorted([".gitattributes", *seeded])
    top = {entry.path: type(entry) for entry in api.list_repo_tree(REPO, repo_type="dataset")}
    assert top == {".gitattributes": RepoFile, "README.md": RepoFile, "manifest.json": RepoFile, "cfg": RepoFolder}
    inside = {entry.path: entry for entry in api.list_repo_tree(REPO, "cfg", repo_type="dataset", recursive=True)}
    assert set(inside) == {PARQUET, TAR} and inside[PARQUET].lfs is not None and inside[PARQUET].size == len(seeded[PARQUET])
    info = api.dataset_info(REPO, files_metadata=True)
    assert info.sha == sha and info.private is False and info.card_data is not None
    assert {sibling.rfilename for sibling in info.siblings or []} == {".gitattributes", *seeded}
    request = urllib.request.Request(f"{hub.url}/datasets/{REPO}/resolve/main/{PARQUET}", headers={"Range": "bytes=4-"})
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 206 and answer.read() == seeded[PARQUET][4:]
        assert answer.headers["X-Repo-Commit"] == sha


def test_missing_repo_file_and_revision(hub: HubStub) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub.add_files(REPO, seed_files())
    with pytest.raises(RepositoryNotFoundError):
        download("org/nope")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "manifest.json", repo_type="dataset")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.json", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        download(revision="no-such-branch")


def test_private_repo_needs_the_token(hub: HubStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    seeded = seed_files()
    hub.add_files(REPO, seeded, private=True)
    with pytest.raises(RepositoryNotFoundError):
        download(token=False)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "manifest.json", repo_type="dataset", token=False)
    with pytest.raises(HfHubHTTPError) as wrong:
        download(token="hf_not_the_right_one")
    assert wrong.value.response.status_code == 401
    assert tree(download())["manifest.json"] == seeded["manifest.json"]  # HF_TOKEN, set by use_hub_stub
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepositoryNotFoundError):
        download(cache_dir=tmp_path / "fresh")  # no HF_TOKEN, no token file: anonymous


def test_an_upload_through_the_api_is_downloadable(hub: HubStub) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    hub.add_files(REPO, seed_files())
    shard, extra = PARQUET, b'{"extra": 1}'
    new_shard = parquet_bytes([7, 8])
    commit = HfApi().create_commit(REPO, [CommitOperationAdd("extra.json", extra), CommitOperationAdd(shard, new_shard)],
                                   commit_message="more", repo_type="dataset")
    assert commit.oid == hub.commit_sha(REPO)
    assert hub.lfs_puts == [hashlib.sha256(new_shard).hexdigest()]  # the shard went through LFS, the JSON did not
    assert hub.repos[f"datasets/{REPO}"].branches["main"][shard] == (new_shard, True)
    root = download(allow_patterns=["extra.json", "*/*.parquet"])
    assert root.name == commit.oid and tree(root) == {"extra.json": extra, shard: new_shard}
