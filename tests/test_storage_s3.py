"""Output on object storage: ``--out s3://bucket/prefix`` against a real S3 protocol server.

moto's ``ThreadedMotoServer`` listens on 127.0.0.1 (a free port); s3fs reaches it through the
usual ``AWS_ENDPOINT_URL``, exactly as a user points the tool at MinIO or Ceph. The objects are
read back with boto3, a client independent of the one the tool uses (no shared caches).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from builder.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_MODELS  # noqa: E402

from test_cli import assert_one_line_error  # noqa: E402

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A local S3 server with the bucket ``bench``; every client in this process points at it."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # none may keep an endpoint from before
        client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")


def objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` (relative name -> bytes), read with boto3."""
    s3 = client(endpoint)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for entry in page.get("Contents", []):
            found[entry["Key"][len(prefix) + 1:]] = s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
    return found


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(recipe: Path, out: str, *extra: str) -> Any:
    return CliRunner().invoke(main, ["-q", "run", str(recipe), "--out", out, "--device", "cpu", "--no-progress", *extra])


@pytest.fixture
def local_build(tiny_recipe: Path, tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "local"
    result = run(tiny_recipe, str(out))
    assert result.exit_code == 0, result.output
    return local_files(out)


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_a_build_to_s3_equals_a_local_build_and_verify_and_score_read_it(s3_server: str, tiny_recipe: Path, local_build: dict[str, bytes],
                                                                           tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/built"
    result = run(tiny_recipe, url)
    assert result.exit_code == 0, result.output
    stored = objects(s3_server, "built")
    assert digests(stored) == digests(local_build)  # every object, stats and final files too: same names, same sha256
    manifest_id = json.loads(local_build["manifest.json"])["id"]
    assert json.loads(stored["manifest.json"])["id"] == manifest_id and manifest_id in result.output

    cache = tmp_path / "cache"
    verified = CliRunner().invoke(main, ["-q", "verify", url, "--cache-dir", str(cache)])
    assert verified.exit_code == 0, verified.output
    assert "mirrored to" in verified.output

    scores = []
    for benchmark in (url, str(tmp_path / "local")):
        scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", benchmark, "--model", f"py:{TINY_MODELS}:color_net", "--workers", "0",
                                           "--bootstrap", "10", "--device", "cpu", "--json", str(tmp_path / "score.json"), "--cache-dir", str(cache)])
        assert scored.exit_code == 0, scored.output
        [figures] = json.loads((tmp_path / "score.json").read_text())["results"]
        assert figures.pop("benchmark") == benchmark and figures["benchmark_id"] == manifest_id
        scores.append(figures)
    assert scores[0] == scores[1]  # the URL scores exactly as the local dir


def test_card_and_gallery_rewrite_a_build_on_s3_as_they_do_a_local_one(s3_server: str, tiny_recipe: Path, local_build: dict[str, bytes],
                                                                       tmp_path: Path) -> None:
    """'card URL --results' and 'gallery URL' render in the cache's mirror and put the files back:
    the store then holds what the same commands write into a local build, and still verifies."""
    url, local, cache = f"s3://{BUCKET}/carded", tmp_path / "local", tmp_path / "cache"
    assert run(tiny_recipe, url).exit_code == 0
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(local), "--model", f"py:{TINY_MODELS}:color_net", "--workers", "0",
                                       "--bootstrap", "0", "--device", "cpu", "--json", str(tmp_path / "r.json")])
    assert scored.exit_code == 0, scored.output
    for where in (url, str(local)):
        carded = CliRunner().invoke(main, ["-q", "card", where, "--results", str(tmp_path / "r.json"), "--repo-id", "org/tiny", "--cache-dir", str(cache)])
        assert carded.exit_code == 0 and f"wrote {where}/README.md, {where}/leaderboard.json with 1 result file(s)" in carded.output, carded.output
        gallery = CliRunner().invoke(main, ["-q", "gallery", where, "--per-class", "1", "--cache-dir", str(cache)])
        assert gallery.exit_code == 0 and f"wrote {where}/gallery.html" in gallery.output, gallery.output
    stored, rewritten = objects(s3_server, "carded"), local_files(local)
    for name in ("README.md", "leaderboard.json", "gallery.html"):
        assert stored[name] == rewritten[name] != local_build.get(name), name
    assert "color_net" in stored["README.md"].decode()
    verified = CliRunner().invoke(main, ["-q", "verify", url, "--cache-dir", str(cache)])
    assert verified.exit_code == 0, verified.output


def test_a_webdataset_source_reads_its_shards_from_s3(s3_server: str, tmp_path: Path) -> None:
    """'urls: s3://bucket/shards-{0..1}.tar' (img2dataset's usual output): each shard is downloaded
    once into the cache through fsspec, with the store's usual config (a glob is listed in the
    store); a missing object is one line."""
    from helpers import BLUE, GREEN, RED, make_source, write_shard

    from builder.checkpoints import ResolveContext, find_location
    from builder.errors import CheckpointError
    from builder.sources.decode import load_rgb

    s3 = client(s3_server)
    for index, samples in enumerate([[("a", RED, 0), ("b", GREEN, 1)], [("c", BLUE, 1)]]):
        write_shard(tmp_path / f"s-{index}.tar", samples)
        s3.put_object(Bucket=BUCKET, Key=f"shards/s-{index}.tar", Body=(tmp_path / f"s-{index}.tar").read_bytes())
    config = {"kind": "webdataset", "urls": f"s3://{BUCKET}/shards/s-{{0..1}}.tar", "class_names": ["x", "y"]}
    ctx = ResolveContext(tmp_path, tmp_path / "cache")
    assert find_location(f"s3://{BUCKET}/shards/s-0.tar", ctx).fetchable
    source = make_source(config, tmp_path)
    items = list(source.items(0, len(source)))
    assert [item.source_id for item in items] == ["s-0.tar/a", "s-0.tar/b", "s-1.tar/c"] and [item.label for item in items] == [0, 1, 1]
    assert [tuple(load_rgb(item.load, 2)[0, 0]) for item in items] == [RED, GREEN, BLUE]
    globbed = make_source({**config, "urls": f"s3://{BUCKET}/shards/s-*.tar"}, tmp_path)  # listed in the store, then fetched
    assert [item.source_id for item in globbed.items(0, 9)] == [item.source_id for item in items]
    cached = find_location(f"s3://{BUCKET}/shards/s-1.tar", ctx)
    assert cached.how == "in the cache" and cached.path is not None and cached.path.read_bytes() == (tmp_path / "s-1.tar").read_bytes()
    s3.delete_object(Bucket=BUCKET, Key="shards/s-0.tar")
    assert len(make_source(config, tmp_path)) == 3  # from the cache: the store is not asked again
    with pytest.raises(CheckpointError, match=rf"^s3://{BUCKET}/shards/s-7.tar: no such object; check the bucket"):
        make_source({**config, "urls": f"s3://{BUCKET}/shards/s-7.tar"}, tmp_path)


def test_verify_on_a_url_checks_the_stores_bytes_not_a_stale_copy(s3_server: str, tiny_recipe: Path, tmp_path: Path) -> None:
    from builder.storage import mirror_dir

    url, cache = f"s3://{BUCKET}/checked", tmp_path / "cache"
    assert run(tiny_recipe, url, "--limit", "5").exit_code == 0
    verify = ["-q", "verify", url, "--cache-dir", str(cache)]
    assert CliRunner().invoke(main, verify).exit_code == 0
    copy = mirror_dir(url, cache)
    (copy / "README.md").write_text("edited here")  # the local copy changed: downloaded again
    (copy / "cnn" / "stray.parquet").write_bytes(b"not in the store")  # not in the store: removed
    again = CliRunner().invoke(main, verify)
    assert again.exit_code == 0, again.output
    assert not (copy / "cnn" / "stray.parquet").exists()
    client(s3_server).put_object(Bucket=BUCKET, Key="checked/cnn/test-00000-of-00001.tar", Body=b"torn")  # the store changed
    broken = CliRunner().invoke(main, verify)
    assert broken.exit_code == 1 and "test-00000-of-00001.tar" in broken.output


def test_foreign_objects_under_the_prefix_are_never_deleted(s3_server: str, tiny_recipe: Path, tmp_path: Path) -> None:
    """The local dir's ownership rules, on a store: a prefix holding someone else's objects is
    refused; after a build, --overwrite refuses foreign objects unless --force-clean."""
    s3 = client(s3_server)
    s3.put_object(Bucket=BUCKET, Key="theirs/notes.txt", Body=b"precious")
    assert_one_line_error(run(tiny_recipe, f"s3://{BUCKET}/theirs"), "refusing to write into", "holds no build of this tool")
    assert objects(s3_server, "theirs") == {"notes.txt": b"precious"}

    url = f"s3://{BUCKET}/owned"
    assert run(tiny_recipe, url, "--limit", "5").exit_code == 0
    s3.put_object(Bucket=BUCKET, Key="owned/results.json", Body=b"{}")
    assert_one_line_error(run(tiny_recipe, url, "--limit", "5", "--overwrite"), "refusing to overwrite", "results.json", "--force-clean")
    again = run(tiny_recipe, url, "--limit", "5")  # a resume with nothing left to do keeps the user's file
    assert again.exit_code == 0, again.output
    assert objects(s3_server, "owned")["results.json"] == b"{}"
    assert run(tiny_recipe, url, "--limit", "5", "--overwrite", "--force-clean").exit_code == 0
    assert "results.json" not in objects(s3_server, "owned")


def test_folder_markers_are_no_files_of_a_build(s3_server: str, tiny_recipe: Path, tmp_path: Path) -> None:
    """A zero-byte key ending in '/' (the AWS console's "Create folder") was listed under the
    empty name: a new prefix with its marker was "not empty", and a marker inside a finished
    build made verify and resume refuse the empty file name."""
    s3 = client(s3_server)
    s3.put_object(Bucket=BUCKET, Key="marked/", Body=b"")
    url = f"s3://{BUCKET}/marked"
    built = run(tiny_recipe, url, "--limit", "5")
    assert built.exit_code == 0, built.output
    s3.put_object(Bucket=BUCKET, Key="marked/extra/", Body=b"")
    verified = CliRunner().invoke(main, ["-q", "verify", url, "--cache-dir", str(tmp_path / "cache")])
    assert verified.exit_code == 0, verified.output
    assert run(tiny_recipe, url, "--limit", "5").exit_code == 0  # a resume with nothing left to do


def test_the_endpoint_can_come_from_storage_options(s3_server: str, tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without AWS_ENDPOINT_URL (it would be AWS itself), ``--storage-option endpoint_url=`` points
    the build and its readers at the server."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    url, option = f"s3://{BUCKET}/optioned", ["--storage-option", f"endpoint_url={s3_server}"]
    result = run(tiny_recipe, url, "--limit", "5", *option)
    assert result.exit_code == 0, result.output
    assert "manifest.json" in objects(s3_server, "optioned")
    verified = CliRunner().invoke(main, ["-q", "verify", url, "--cache-dir", str(tmp_path / "cache"), *option])
    assert verified.exit_code == 0, verified.output


class PutRecorder:
    """Wraps the store's two ways of writing: after every put, no object under a final name may
    hold other bytes than the uninterrupted build's (or be a name that build does not have); the
    ``fail_at``-th shard upload fails before sending anything, like a dropped connection."""

    def __init__(self, endpoint: str, prefix: str, final: dict[str, bytes], fail_at: int) -> None:
        self.endpoint, self.prefix, self.final, self.fail_at = endpoint, prefix, final, fail_at
        self.shard_puts: list[str] = []

    def check(self) -> None:
        for name, data in objects(self.endpoint, self.prefix).items():
            assert name in self.final, f"{name}: not a name the build has"
            if name == "manifest.json" and json.loads(data).get("complete") is False:
                continue  # an interrupted build's manifest says so
            assert data == self.final[name], f"{name}: other bytes than its final ones"

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from builder.storage import RemoteStorage

        put_file, put_bytes = RemoteStorage.put_file, RemoteStorage.put_bytes

        def recording_put_file(storage: RemoteStorage, local: Path, relative: str) -> None:
            self.shard_puts.append(relative)
            if len(self.shard_puts) == self.fail_at:
                raise ConnectionResetError(104, "Connection reset by peer")
            put_file(storage, local, relative)
            self.check()

        def recording_put_bytes(storage: RemoteStorage, relative: str, data: bytes) -> None:
            put_bytes(storage, relative, data)
            self.check()

        monkeypatch.setattr(RemoteStorage, "put_file", recording_put_file)
        monkeypatch.setattr(RemoteStorage, "put_bytes", recording_put_bytes)


def test_an_interrupted_upload_resumes_to_identical_objects(s3_server: str, tiny_recipe: Path, local_build: dict[str, bytes],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = PutRecorder(s3_server, "resumed", local_build, fail_at=4)  # unit 0 done (2 shards), unit 1 has its first shard only
    recorder.install(monkeypatch)
    url = f"s3://{BUCKET}/resumed"
    assert_one_line_error(run(tiny_recipe, url), "cannot write", "Connection reset", "resume with the same command")
    interrupted = objects(s3_server, "resumed")
    assert "manifest.json" not in interrupted and "_stats/cnn/test-00000-of-00003.json" in interrupted
    assert "_stats/cnn/test-00001-of-00003.json" not in interrupted

    recorder.fail_at, recorder.shard_puts = 0, []
    result = run(tiny_recipe, url)
    assert result.exit_code == 0, result.output
    assert digests(objects(s3_server, "resumed")) == digests(local_build)
    assert not any(name.startswith("cnn/test-00000-") for name in recorder.shard_puts)  # the finished unit was kept, not redone


def built_with_threads(tiny_recipe: Path, out: Path, threads: int) -> dict[str, bytes]:
    """A local single-process build with ``threads`` torch threads: what workers with that many
    each must equal (on a CPU the thread count shapes the bytes, and units record it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run(tiny_recipe, str(out))
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return local_files(out)


@pytest.mark.slow
def test_spawned_workers_upload_the_same_objects(s3_server: str, tiny_recipe: Path, tmp_path: Path) -> None:
    """Worker processes open the store themselves, from the same URL and environment."""
    import torch

    result = run(tiny_recipe, f"s3://{BUCKET}/workers", "--workers", "2")
    assert result.exit_code == 0, result.output
    local = built_with_threads(tiny_recipe, tmp_path / "local", max(1, torch.get_num_threads() // 2))
    assert digests(objects(s3_server, "workers")) == digests(local)


@pytest.mark.slow
def test_ray_actors_upload_the_same_objects(s3_server: str, tiny_recipe: Path, tmp_path: Path) -> None:
    """Ray actors (a local cluster the build starts and stops; one CPU, so one thread, each)
    write straight to the store."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
    result = run(tiny_recipe, f"s3://{BUCKET}/ray", "--executor", "ray", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert digests(objects(s3_server, "ray")) == digests(built_with_threads(tiny_recipe, tmp_path / "local", 1))


@pytest.mark.slow
def test_kill_minus_nine_mid_upload_then_the_same_command(s3_server: str, tiny_recipe: Path, tmp_path: Path) -> None:
    """A driver killed while it uploads (one sample per unit: many puts to die in), then the
    same command again: the objects of an uninterrupted build to another prefix."""
    import os
    import signal
    import subprocess
    import time

    import yaml

    data = yaml.safe_load(tiny_recipe.read_text())
    data["output"]["samples_per_shard"] = 1
    recipe = tiny_recipe.with_name("one-per-shard.yaml")
    recipe.write_text(yaml.safe_dump(data))
    assert run(recipe, f"s3://{BUCKET}/uninterrupted").exit_code == 0
    expected = digests(objects(s3_server, "uninterrupted"))
    command = [sys.executable, "-m", "builder.cli", "-q", "run", str(recipe), "--out", f"s3://{BUCKET}/killed", "--no-progress", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while sum(name.startswith("_stats/cnn/") for name in objects(s3_server, "killed")) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert "manifest.json" not in objects(s3_server, "killed"), "the build finished before the kill"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert digests(objects(s3_server, "killed")) == expected


@pytest.mark.parametrize("out, extra, fragment", [
    ("gs://bucket/prefix", (), "pip install gcsfs"),
    ("nosuchscheme://bucket/prefix", (), "not a storage scheme fsspec knows"),
    ("LOCAL", ("--storage-option", "endpoint_url=http://127.0.0.1:1"), "--storage-option goes with a URL"),
    ("s3://bench/x", ("--storage-option", "no-equals-sign"), "is not KEY=VALUE"),
    ("s3://bench/an-object.txt", (), "is an object, not a prefix"),
])
def test_a_location_that_cannot_be_used_is_one_line(tiny_recipe: Path, tmp_path: Path, out: str, extra: tuple[str, ...], fragment: str,
                                                     request: pytest.FixtureRequest) -> None:
    if out.startswith("gs://") and _installed("gcsfs"):
        pytest.skip("gcsfs is installed here")
    location = str(tmp_path / "o") if out == "LOCAL" else out
    if out.endswith(".txt"):
        client(request.getfixturevalue("s3_server")).put_object(Bucket=BUCKET, Key="an-object.txt", Body=b"mine")
    assert_one_line_error(run(tiny_recipe, location, *extra), fragment)
    assert not (tmp_path / "o").exists()


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_a_mirror_from_a_store_that_lists_no_version_follows_its_bytes(tmp_path: Path) -> None:
    """fsspec's memory store (like ftp and webhdfs) lists no ETag or mtime: size alone cannot
    tell a changed file of the same size, so such objects are fetched every time (the copy kept
    the old bytes). An object that is also a folder is one line; another reader's temp files
    in the mirror are not deleted as stale."""
    import fsspec

    from builder.errors import OutputError
    from builder.storage import RemoteStorage, mirror, mirror_dir

    memory = fsspec.filesystem("memory")
    url = f"memory://bench-{tmp_path.name}"
    memory.pipe(f"{url}/manifest.json", b'{"id": "aaaa"}')
    storage = RemoteStorage(url, {})
    copy = mirror(storage, tmp_path)
    assert (copy / "manifest.json").read_bytes() == b'{"id": "aaaa"}'
    in_flight = copy / ".manifest.json.tmp-999-abcd"  # another process's download, or the finalizer's write
    in_flight.write_bytes(b"half")
    memory.pipe(f"{url}/manifest.json", b'{"id": "bbbb"}')  # the same size
    assert (mirror(storage, tmp_path) / "manifest.json").read_bytes() == b'{"id": "bbbb"}'
    assert in_flight.exists() and mirror_dir(url, tmp_path).with_name(mirror_dir(url, tmp_path).name + ".lock").exists()
    memory.pipe(f"{url}/cfg/x.parquet", b"an object below 'cfg'")
    memory.pipe(f"{url}/cfg", b"and 'cfg' itself")
    with pytest.raises(OutputError, match=r"/cfg") as caught:  # the memory store itself refuses one of the two reads
        mirror(storage, tmp_path)
    assert "\n" not in str(caught.value)
    memory.rm(url, recursive=True)


def test_storage_options_with_a_local_benchmark_are_one_line_for_score_and_verify(tiny_build: Path) -> None:
    """As run, publish, card and gallery already did: an option for a URL's store given with a
    local dir was silently ignored by score and verify."""
    from click.testing import CliRunner

    from builder.cli import main

    option = ("--storage-option", "endpoint_url=http://127.0.0.1:1")
    for args in (["verify", str(tiny_build), *option],
                 ["score", "--benchmark", str(tiny_build), "--model", "timm:resnet18", "--workers", "0", *option]):
        assert_one_line_error(CliRunner().invoke(main, ["-q", *args]), f"--storage-option goes with a URL such as s3://bucket/prefix, not {tiny_build}")
