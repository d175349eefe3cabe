"""``build-benchmark publish`` against a local stand-in for the Hub (tests/hub_stub.py), never the network."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

import builder.publish as publish_module
from builder.cli import main
from builder.publish import CARD, format_size, plan_upload, publish

from hub_stub import HubStub, closed_port

REPO = "org/tiny"
SHARDS = [f"cnn/test-0000{i}-of-00003.{ext}" for i in range(3) for ext in ("parquet", "tar")]


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """A unique token value, so that finding it anywhere means it leaked."""
    value = f"hf_{secrets.token_hex(20)}"
    monkeypatch.setenv("HF_TOKEN", value)
    return value


@pytest.fixture
def hub(token: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStub]:
    from huggingface_hub import constants

    stub = HubStub(token).start()
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # huggingface_hub reads it at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield stub
    stub.stop()


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["-q", "publish", *args])


def error_line(result: Any) -> str:
    """The one line the CLI prints for a BuilderError (exit code 2), after any progress bars."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, result.output
    return lines[-1]


def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) every outgoing connection."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def expected_files(root: Path) -> list[str]:
    return [f.path for f in plan_upload(root).files]


# ----------------------------------------------------------------------------- dry run


def test_dry_run_prints_the_plan_offline(built: Path, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    attempts = no_network(monkeypatch)
    result = invoke(str(built), "--repo-id", REPO, "--dry-run")
    assert result.exit_code == 0, result.output
    assert attempts == []
    plan = plan_upload(built)
    paths = [f.path for f in plan.files]
    assert paths[:6] == sorted(SHARDS) and paths[-1] == CARD
    assert set(paths[6:-1]) == {"manifest.json", "preview.png", "rejects.jsonl", "gallery.html"}
    assert not any(path.startswith("_stats") for path in paths)
    lfs = {f.path for f in plan.files if f.lfs}
    assert lfs == {*SHARDS, "preview.png"}
    assert plan.total_bytes == sum((built / p).stat().st_size for p in paths)
    out = result.output
    for planned in plan.files:
        line = next(line for line in out.splitlines() if line.strip().startswith(planned.path + " "))
        assert ("LFS" if planned.lfs else "regular") in line
    assert "README.md" in out.splitlines()[len(paths)] and "then one commit that adds every changed file" in out
    assert "at most 1 LFS upload batch(es)" in out and "the repo changes only then, at once" in out
    assert "visibility: a new repo is created public (add --private" in out  # the dry run is told the flag
    assert f"total: {len(paths)} files" in out and "not uploaded: _stats/" in out
    assert "card YAML header:" in out and "config_name: cnn" in out and "path: cnn/test-*.parquet" in out
    assert plan.card_header and plan.card_header in out
    assert token not in out


def test_a_dry_run_with_results_plans_them_and_changes_nothing(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan counts the card and leaderboard.json as they will be sent, but the dir keeps its
    files (a dry run used to rewrite README.md and store the results)."""
    from conftest import TINY_MODELS

    from builder.card import card_files

    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", f"py:{TINY_MODELS}:color_net",
                                       "--workers", "0", "--bootstrap", "0", "--json", str(tmp_path / "a.json")])
    assert scored.exit_code == 0, scored.output
    before = {path: path.read_bytes() for path in built.rglob("*") if path.is_file()}
    no_network(monkeypatch)
    result = invoke(str(built), "--repo-id", REPO, "--dry-run", "--results", str(tmp_path / "a.json"))
    assert result.exit_code == 0, result.output
    assert {path: path.read_bytes() for path in built.rglob("*") if path.is_file()} == before
    rendered = card_files(built, [tmp_path / "a.json"], repo_id=REPO)
    lines = result.output.splitlines()
    for name in ("leaderboard.json", CARD):
        line = next(line for line in lines if line.strip().startswith(name + " "))
        assert format_size(len(rendered[name])) in line, line
    planned = [line.split()[0] for line in lines[1 : next(i for i, line in enumerate(lines) if line.startswith("total:"))]]
    assert planned[-2:] == ["leaderboard.json", CARD]


# ----------------------------------------------------------------------------- real upload to the stand-in


def test_publish_uploads_every_file_in_one_commit(built: Path, hub: HubStub) -> None:
    """Every file lands in ONE commit (the repo goes from nothing, or an earlier build, to this
    build at once); LFS files went through the LFS API first."""
    result = invoke(str(built), "--repo-id", REPO, "--private")
    assert result.exit_code == 0, result.output
    assert f"published to {hub.url}/datasets/{REPO}" in result.output and "in 1 commit(s)" in result.output
    repo = hub.repos[f"datasets/{REPO}"]
    assert repo.kind == "datasets" and repo.private
    remote = hub.files(REPO)
    assert set(remote) == {*expected_files(built), ".gitattributes"}
    for path in expected_files(built):
        assert remote[path] == (built / path).read_bytes(), path
    assert not any(path.startswith("_stats") for path in remote)
    assert all(repo.branches["main"][path][1] for path in SHARDS)  # went through LFS
    assert len(hub.commits) == 1 and hub.commits[0].added == sorted(expected_files(built)) and hub.commits[0].deleted == []
    assert len(hub.lfs_puts) == len(set(hub.lfs_puts)) == len(SHARDS) + 1  # the shards and preview.png
    # the same command again: nothing to send
    commits, puts = len(hub.commits), list(hub.lfs_puts)
    again = invoke(str(built), "--repo-id", REPO, "--private")
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output
    assert len(hub.commits) == commits and hub.lfs_puts == puts


def test_publish_to_a_new_branch_leaves_main_alone(built: Path, hub: HubStub) -> None:
    result = invoke(str(built), "--repo-id", REPO, "--revision", "v1", "--message", "first release")
    assert result.exit_code == 0, result.output
    assert not hub.repos[f"datasets/{REPO}"].private
    assert set(hub.files(REPO)) == {".gitattributes"}
    assert set(hub.files(REPO, "v1")) == {*expected_files(built), ".gitattributes"}
    assert {commit.branch for commit in hub.commits} == {"v1"}
    assert all(commit.message.startswith("first release") for commit in hub.commits)
    card = hub.files(REPO, "v1")["README.md"].decode()
    assert f'load_dataset("{REPO}", name="cnn", split="test", revision="v1")' in card and "/resolve/v1/cnn/" in card


def test_results_reach_the_card_and_stale_shards_go(built: Path, hub: HubStub, tmp_path: Path) -> None:
    from conftest import TINY_MODELS

    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", f"py:{TINY_MODELS}:color_net",
                                       "--workers", "0", "--bootstrap", "0", "--json", str(tmp_path / "a.json")])
    assert scored.exit_code == 0, scored.output
    result = invoke(str(built), "--repo-id", REPO, "--results", str(tmp_path / "a.json"))
    assert result.exit_code == 0, result.output
    card = hub.files(REPO)[CARD].decode()
    assert "## Leaderboard" in card and "color_net" in card and f'load_dataset("{REPO}", name="cnn"' in card
    assert card.encode() == (built / CARD).read_bytes() and "leaderboard.json" in hub.files(REPO)
    table = card[card.index("## Leaderboard"):]
    assert str(built) not in card and str(TINY_MODELS.parent) not in table and "`py:tiny_models.py:color_net`" in table  # no local folders
    published = hub.files(REPO)["leaderboard.json"].decode()  # nor in the rows published beside it
    assert str(built) not in published and str(TINY_MODELS.parent) not in published and str(tmp_path) not in published
    assert json.loads(published)[0]["model"] == "py:tiny_models.py:color_net"
    # a shard of an earlier, larger build would be picked up by the card's glob: it goes in the commit
    stale = "cnn/test-00003-of-00004.parquet"
    hub.repos[f"datasets/{REPO}"].branches["main"][stale] = (b"old", True)
    again = invoke(str(built), "--repo-id", REPO)
    assert again.exit_code == 0, again.output
    assert f"removed 1 file(s) of an earlier build that this one lacks: {stale}" in again.output
    assert stale not in hub.files(REPO) and hub.commits[-1].deleted == [stale]


#: what an earlier build left in the repo: a manifest, a card, shards (one more than now), its leaderboard
EARLIER = {"manifest.json": b'{"id": "earlier"}\n', CARD: b"---\npretty_name: earlier\n---\n# earlier build\n",
           "cnn/test-00000-of-00004.parquet": b"A0", "cnn/test-00003-of-00004.parquet": b"A3", "leaderboard.json": b"[]\n"}


def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub retries a failed LFS PUT 5 times, sleeping 1 to 8 s between tries: not here."""
    import time as real_time
    from types import SimpleNamespace

    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda seconds: None, time=real_time.time, monotonic=real_time.monotonic))


def test_an_earlier_builds_other_configs_and_tool_files_go_a_users_files_stay(built: Path, hub: HubStub) -> None:
    """A re-publish removes, in its one commit, the shards of configs this build does not have
    (they would stay loadable, and verify on the Hub id would flag them) and the tool's files it
    lacks; the files a user put in the repo are never touched."""
    earlier = {"old/test-00000-of-00001.parquet": b"o0", "old/test-00000-of-00001.tar": b"o0", "leaderboard.json": b"[]\n",
               "cnn/test-00005-of-00006.tar": b"c5"}
    users = {"notes.md": b"mine", "old/notes.txt": b"mine", "cnn/extra.txt": b"mine", "old/sub/test-00000-of-00001.parquet": b"x",
             "Raw Data/test-00000-of-00001.parquet": b"not a config's dir name", "old/test-00000-of-00001.csv": b"not a shard format"}
    hub.add_files(REPO, {**earlier, **users})
    result = invoke(str(built), "--repo-id", REPO)
    assert result.exit_code == 0, result.output
    (commit,) = hub.commits
    assert commit.deleted == sorted(earlier)
    assert f"removed {len(earlier)} file(s) of an earlier build that this one lacks: {', '.join(sorted(earlier))}" in result.output
    remote = hub.files(REPO)
    assert set(remote) == {*expected_files(built), ".gitattributes", *users}
    assert all(remote[path] == data for path, data in users.items())


def test_private_refuses_an_existing_public_repo_before_any_upload(built: Path, hub: HubStub) -> None:
    """create_repo(private=True, exist_ok=True) keeps a public repo public: --private must not
    upload into it; without --private, or once the repo is private, it publishes."""
    hub.add_files(REPO, {"notes.md": b"someone made the repo, public"})
    before, requests = hub.files(REPO), len(hub.requests)
    line = error_line(invoke(str(built), "--repo-id", REPO, "--private"))
    assert f"--private: dataset {REPO} exists and is public" in line and "nothing was sent" in line, line
    assert f"`hf repos settings {REPO} --private --repo-type dataset`" in line and "drop --private" in line
    assert hub.files(REPO) == before and hub.commits == [] and hub.lfs_puts == []
    assert not any(method == "PUT" or "/commit/" in path or "/preupload/" in path for method, path in hub.requests[requests:])
    hub.repos[f"datasets/{REPO}"].private = True  # made private on the Hub
    result = invoke(str(built), "--repo-id", REPO, "--private")
    assert result.exit_code == 0, result.output
    assert hub.repos[f"datasets/{REPO}"].private and set(hub.files(REPO)) >= set(expected_files(built))
    assert invoke(str(built), "--repo-id", REPO).exit_code == 0  # without --private: a private repo stays private
    assert hub.repos[f"datasets/{REPO}"].private


def test_the_plan_says_which_visibility_a_new_repo_gets(built: Path) -> None:
    from builder.publish import format_plan

    plan = plan_upload(built)
    assert "visibility: a new repo is created private; an existing public repo is refused" in format_plan(plan, REPO, private=True)
    assert "visibility: a new repo is created public (add --private" in format_plan(plan, REPO, private=False)


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_an_interrupted_republish_leaves_the_earlier_build_whole_and_resumes(built: Path, hub: HubStub,
                                                                             monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Interrupted in the LFS uploads, the repo still holds the earlier build untouched (no
    manifest of one beside shards or card of the other); re-run, nothing already uploaded is
    sent again, and one commit replaces the earlier build with this one."""
    monkeypatch.setattr(publish_module, "BATCH_MAX_FILES", 2)  # 7 LFS files: 4 batches, then the commit
    no_retry_wait(monkeypatch)
    hub.add_files(REPO, EARLIER)
    before = hub.files(REPO)
    hub.fail_puts_from, hub.fail_mode = 3, mode  # batch 1 lands, batch 2 fails
    line = error_line(invoke(str(built), "--repo-id", REPO))
    assert "interrupted at step 2 of 5 (LFS upload batch 2 of 4)" in line and "1 of 5 step(s) done" in line, line
    assert "the repo changes only at the last one, the commit; re-run the same command to resume" in line
    assert hub.files(REPO) == before and hub.commits == []
    first = list(hub.lfs_puts)
    assert len(first) == 2

    hub.fail_puts_from = None
    result = invoke(str(built), "--repo-id", REPO)
    assert result.exit_code == 0, result.output
    assert hub.lfs_puts[:2] == first and len(hub.lfs_puts) == len(set(hub.lfs_puts)) == len(SHARDS) + 1, "an LFS object was sent twice"
    (commit,) = hub.commits
    assert commit.added == sorted(expected_files(built))
    assert commit.deleted == ["cnn/test-00000-of-00004.parquet", "cnn/test-00003-of-00004.parquet", "leaderboard.json"]
    remote = hub.files(REPO)
    assert set(remote) == {*expected_files(built), ".gitattributes"}
    assert all(remote[path] == (built / path).read_bytes() for path in expected_files(built))


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_an_interrupted_commit_changes_nothing_and_a_rerun_sends_no_lfs_file_again(built: Path, hub: HubStub, mode: str) -> None:
    hub.add_files(REPO, EARLIER)
    before = hub.files(REPO)
    hub.fail_commit, hub.fail_mode = 1, mode
    line = error_line(invoke(str(built), "--repo-id", REPO))
    assert "interrupted at step 2 of 2 (the commit)" in line and "1 of 2 step(s) done" in line, line
    assert hub.files(REPO) == before and hub.commits == []
    uploaded = list(hub.lfs_puts)
    assert len(uploaded) == len(SHARDS) + 1

    hub.fail_commit = None
    result = invoke(str(built), "--repo-id", REPO)
    assert result.exit_code == 0, result.output
    assert hub.lfs_puts == uploaded  # every LFS object was already in the Hub's storage
    assert len(hub.commits) == 1 and set(hub.files(REPO)) == {*expected_files(built), ".gitattributes"}


def test_a_rerun_of_the_same_build_only_commits_what_changed(built: Path, hub: HubStub) -> None:
    """Files the repo already holds with the same content stay out of the commit."""
    assert invoke(str(built), "--repo-id", REPO).exit_code == 0
    hub.repos[f"datasets/{REPO}"].branches["main"]["gallery.html"] = (b"<p>older</p>", False)
    puts = list(hub.lfs_puts)
    result = invoke(str(built), "--repo-id", REPO)
    assert result.exit_code == 0, result.output
    assert hub.commits[-1].added == ["gallery.html"] and hub.lfs_puts == puts
    assert hub.files(REPO)["gallery.html"] == (built / "gallery.html").read_bytes()


# ----------------------------------------------------------------------------- refusals and errors


def test_a_refusal_mid_upload_is_not_called_an_interruption(built: Path, hub: HubStub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4xx answer to the commit, or the Hub's check of the card's header refusing it, would come
    again on a re-run: the error says what was refused, not "interrupted, re-run to resume". The
    card's header is checked before any LFS upload."""
    hub.fail_commit, hub.fail_mode = 1, "422"
    line = error_line(invoke(str(built), "--repo-id", REPO))
    assert "the Hub refused step 2 of 2 (the commit) for dataset org/tiny" in line and "HTTP 422" in line and "re-run" not in line
    hub.fail_commit = None
    import builder.card as card_module

    monkeypatch.setattr(card_module, "card_license", lambda license_id: {"license": "Some License"})
    puts = list(hub.lfs_puts)
    hub.lfs_objects.clear()  # a fresh storage: the refusal must come before any upload
    line = error_line(invoke(str(built), "--repo-id", REPO))
    assert "the Hub refused the card's YAML header (Invalid metadata in README.md. - " in line and "must be one of [apache-2.0" in line
    assert "nothing was sent, the repo is unchanged; re-running will not help" in line and CARD not in hub.files(REPO)
    assert hub.lfs_puts == puts and hub.commits == []


def test_refuses_a_dir_that_fails_verify(built: Path, hub: HubStub) -> None:
    shard = built / SHARDS[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    line = error_line(invoke(str(built), "--repo-id", REPO))
    assert "fails verify" in line and SHARDS[0] in line and f"build-benchmark verify {built}" in line
    assert hub.requests == []


def test_missing_token(tmp_path: Path, hub: HubStub, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    line = error_line(invoke(str(tmp_path), "--repo-id", REPO))
    assert "set HF_TOKEN or run `hf auth login`" in line
    assert hub.requests == []


@pytest.mark.parametrize("repo_id", ["tiny", "org/sub/tiny", "org/bad..name", "org/-x-", "org/"])
def test_malformed_repo_id(tmp_path: Path, hub: HubStub, repo_id: str) -> None:
    line = error_line(invoke(str(tmp_path), "--repo-id", repo_id))
    assert f"'{repo_id}'" in line
    assert hub.requests == []


def test_no_permission_names_the_user_not_the_token(built: Path, hub: HubStub, token: str) -> None:
    hub.forbidden = True
    line = error_line(invoke(str(built), "--repo-id", REPO))
    assert "no permission" in line and "'tester'" in line and REPO in line
    assert token not in line


def test_wrong_token_is_refused(built: Path, hub: HubStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    line = error_line(invoke(str(built), "--repo-id", REPO))
    assert "401" in line and "hf auth login" in line and "hf_not_the_right_one" not in line


def test_unreachable_endpoint_fails_fast(built: Path, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    started = time.monotonic()
    line = error_line(invoke(str(built), "--repo-id", REPO))
    assert time.monotonic() - started < 10
    assert f"cannot reach the Hub at {endpoint}" in line and "offline?" in line


# ----------------------------------------------------------------------------- the token stays secret


def test_token_appears_nowhere(built: Path, hub: HubStub, token: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("huggingface_hub").setLevel(logging.DEBUG)
    outputs = [invoke(str(built), "--repo-id", REPO, "--dry-run").output]
    publish(built, REPO)
    rerun = CliRunner().invoke(main, ["-vv", "publish", str(built), "--repo-id", REPO])
    assert rerun.exit_code == 0, rerun.output
    outputs.append(rerun.output)
    secret = token.encode()
    for text in [*outputs, caplog.text]:
        assert token not in text
    for path in built.rglob("*"):
        assert not path.is_file() or secret not in path.read_bytes(), path
    for data in [*hub.files(REPO).values(), *hub.lfs_objects.values()]:
        assert secret not in data
    assert all(token not in commit.message for commit in hub.commits)


def test_the_stored_leaderboard_names_no_local_folder_and_a_rescore_replaces_its_row(tmp_path: Path) -> None:
    """leaderboard.json is published beside the card: its rows keep a local path's last part and
    mask a URL's credentials. A file written before that (full paths) is read as if it had been,
    so scoring the same model again replaces its row rather than adding a second one."""
    from builder.card import merged_results
    from builder.leaderboard import public_row

    row = {"name": "net", "config": "cnn", "benchmark": "/home/me/benches/digits", "benchmark_id": "b" * 64, "fmr": 50.0,
           "model": "py:/home/me/nets.py:small", "reference_model": "py:/home/me/nets.py:small", "sa": 0.5, "pa": 0.25, "per_class": [{"class_name": "/x"}],
           "model_spec": {"model": "py:/home/me/nets.py:small", "checkpoint": "/home/me/w/net.pt", "name": "net",
                          "train": {"data": "https://user:secret@example.com/d.tar?X-Amz-Signature=abc"}}}
    public = public_row(row)
    assert "/home/me" not in json.dumps(public) and "secret" not in json.dumps(public) and "abc" not in json.dumps(public)
    assert (public["benchmark"], public["model"], public["model_spec"]["checkpoint"]) == ("digits", "py:nets.py:small", "net.pt")
    assert public["model_spec"]["train"]["data"].startswith("https://***@example.com/d.tar") and public["per_class"] == row["per_class"]
    root = tmp_path / "bench"
    root.mkdir()
    (root / "leaderboard.json").write_text(json.dumps([row]))  # as written before rows were made public
    rescored = tmp_path / "again.json"
    rescored.write_text(json.dumps({"results": [{**row, "fmr": 60.0, "model_spec": {**row["model_spec"], "checkpoint": "/elsewhere/w/net.pt"}}]}))
    merged = merged_results(root, "b" * 64, [rescored])
    assert len(merged) == 1 and merged[0]["fmr"] == 60.0 and "/home/me" not in json.dumps(merged)


@pytest.mark.parametrize(("recorded", "header"), [("CC BY 4.0", "license: cc-by-4.0\n"),
                                                  ("Research only", "license: other\nlicense_name: research-only\n")])
def test_a_license_recorded_before_licenses_were_checked_still_publishes(built: Path, hub: HubStub, tmp_path: Path,
                                                                          recorded: str, header: str) -> None:
    """A benchmark built when a recipe's license was not checked against the Hub's ids: its card
    names a Hub id the Hub takes (the stub refuses others, as the Hub does, at the card commit,
    after every shard), without a rebuild: the license is part of the manifest id."""
    import shutil

    from builder.fileio import sha256_json, write_json_atomic

    root = Path(shutil.copytree(built, tmp_path / "legacy"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["recipe"]["license"] = recorded
    manifest["recipe_sha256"] = sha256_json(manifest["recipe"])
    manifest["id"] = sha256_json({"recipe": manifest["recipe_sha256"], "configs": manifest["configs"]})
    write_json_atomic(root / "manifest.json", manifest)
    result = invoke(str(root), "--repo-id", REPO)
    assert result.exit_code == 0, result.output
    card = hub.files(REPO)[CARD].decode()
    assert card.startswith("---\n") and header in card.split("---")[1]
    assert f"license of this derived data: {recorded}" in card


def test_a_result_file_cannot_add_rows_or_html_to_the_card(built: Path, tmp_path: Path) -> None:
    """Result files are shared: a name with '|' and a line break made a row of its own in the
    card's leaderboard, and HTML or an image passed through. Every cell now reads as written;
    a dynamic score is labelled dynamic (it was called white-box), in a leaderboard and its chart."""
    from builder.card import card_files
    from builder.leaderboard import SETTING_COLORS, fmr_figure, leaderboard_markdown

    manifest = json.loads((built / "manifest.json").read_text())
    hostile = "mine | 1.0 | 1.0 | 1.0 | transfer |\n| 1 | best-model <img src=x onerror=alert(1)> ![t](http://t.example/p.png)"
    row = {"name": hostile, "model": "py:m.py:net` <b>x</b> |", "benchmark": "b", "benchmark_id": manifest["id"], "config": "cnn",
           "sa": 0.5, "pa": 0.25, "fmr": 50.0, "white_box": True, "mode": "static"}
    (tmp_path / "r.json").write_text(json.dumps({"results": [row, {**row, "name": "second", "fmr": 40.0}]}))
    table = card_files(built, [tmp_path / "r.json"])["README.md"].decode().split("## Leaderboard")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 2 and all(line.count(" | ") == 6 for line in rows), rows  # seven cells each, whatever the names hold
    assert "<img" not in table and "![t]" not in table and "&lt;img src=x" in table
    assert "(`py:m.py:net' <b>x</b> \\|`)" in rows[0]  # in a code span HTML is shown as written; no backtick ends it early
    assert rows[0].endswith("| white-box |") and rows[1].startswith("| 2 | second")
    board = leaderboard_markdown([row, {**row, "name": "live", "fmr": 40.0, "mode": "dynamic"}])
    assert board.splitlines()[-1].startswith("| 2 | live") and board.splitlines()[-1].endswith("| dynamic |")
    figure = fmr_figure([{**row, "name": "a"}, {**row, "name": "live", "mode": "dynamic"}])
    colors = sorted(tuple(bar.get_facecolor()) for bar in figure.axes[0].patches)
    from matplotlib.colors import to_rgba

    assert colors == sorted([to_rgba(SETTING_COLORS["white-box"]), to_rgba(SETTING_COLORS["dynamic"])])
    assert "green: dynamic" in figure.axes[0].get_xlabel()


def test_a_link_to_a_file_outside_the_benchmark_is_never_uploaded(built: Path, hub: HubStub, tmp_path: Path) -> None:
    """preview.png linked to a file elsewhere (a secret, say) was uploaded under the benchmark's
    name: the planned files must be the benchmark's own."""
    import shutil

    root = Path(shutil.copytree(built, tmp_path / "linked", symlinks=True))
    secret = tmp_path / "secret.txt"
    secret.write_text("AWS_SECRET=hunter2\n")
    (root / "preview.png").unlink()
    (root / "preview.png").symlink_to(secret)
    for args in ((str(root), "--repo-id", REPO, "--dry-run"), (str(root), "--repo-id", REPO)):
        line = error_line(invoke(*args))
        assert f"{root}: preview.png links to {secret}, outside the benchmark" in line
    assert not hub.repos.get(f"datasets/{REPO}") or "preview.png" not in hub.files(REPO)
