"""``score --models zoo.yaml --out DIR``: a zoo scored in one process, a broken model listed, a
second run skipping what is done; the directory feeds ``leaderboard`` and ``card``."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from builder.cli import main

TINY_MODELS = Path(__file__).parent / "tiny_models.py"


def zoo_file(tmp_path: Path) -> Path:
    """Five specs, one broken; seeded weights, so every figure is the same on each run."""
    import torch
    from torchvision.models import get_model

    from tiny_models import tiny_cnn

    for name, make in {"cnn": lambda: tiny_cnn(3), "wide": lambda: tiny_cnn(3, width=4), "resnet": lambda: get_model("resnet18", num_classes=3)}.items():
        torch.manual_seed(0)
        torch.save(make().state_dict(), tmp_path / f"{name}.pt")
    entries = [
        {"name": "color", "model": f"py:{TINY_MODELS}:color_net"},
        {"name": "cnn", "model": f"py:{TINY_MODELS}:tiny_cnn", "checkpoint": "cnn.pt"},
        {"name": "cnn-wide", "model": f"py:{TINY_MODELS}:tiny_cnn", "kwargs": {"width": 4}, "checkpoint": "wide.pt"},
        {"name": "resnet", "model": "torchvision:resnet18", "checkpoint": "resnet.pt"},
        {"name": "broken", "model": "torchvision:resnet81", "pretrained": False},
    ]
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def run_zoo(bench: Path, zoo: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["-q", "score", "--benchmark", str(bench), "--models", str(zoo), "--out", str(out),
                                     "--workers", "0", "--bootstrap", "10", *extra])


def test_a_zoo_scores_all_but_the_broken_one_and_resumes(built: Path, tmp_path: Path) -> None:
    zoo, out = zoo_file(tmp_path), tmp_path / "scores"
    first = run_zoo(built, zoo, out)
    assert first.exit_code == 2, first.output
    assert "zoo: 4 scored, 0 skipped" in first.output and "1 failed" in first.output
    assert "failed broken: " in first.output and "did you mean 'resnet18'" in first.output
    assert first.output.strip().splitlines()[-1].startswith("error: 1 of 5 models failed: broken")
    assert sorted(p.name for p in out.glob("*.json")) == ["cnn-wide.json", "cnn.json", "color.json", "resnet.json"]
    for path in out.glob("*.json"):
        (row,) = json.loads(path.read_text())["results"]
        assert row["name"] == path.stem and abs(row["fmr"] - 100 * row["pa"] / row["sa"]) < 1e-9 and "pa_perturbed" in row
    table = (out / "table.md").read_text()
    assert all(f"| {name} (`" in table for name in ("color", "cnn", "cnn-wide", "resnet")) and "broken" not in table
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}

    second = run_zoo(built, zoo, out)
    assert second.exit_code == 2 and "zoo: 0 scored, 4 skipped" in second.output and "failed broken" in second.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == stamps
    again = run_zoo(built, zoo, out, "--overwrite")
    assert "zoo: 4 scored, 0 skipped" in again.output

    board = CliRunner().invoke(main, ["-q", "leaderboard", str(out), "--out", str(tmp_path / "board")])
    assert board.exit_code == 0, board.output
    assert "| 4 |" in (tmp_path / "board" / "leaderboard.md").read_text()
    card = CliRunner().invoke(main, ["-q", "card", str(built), "--results", str(out)])
    assert card.exit_code == 0, card.output
    assert "cnn-wide" in (built / "README.md").read_text()


def test_zoo_file_problems_are_one_line(built: Path, tmp_path: Path) -> None:
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump([{"model": "torchvision:resnet18"}]))
    result = run_zoo(built, path, tmp_path / "out")
    assert result.exit_code == 2 and "entry 0 needs a name" in result.output
    path.write_text(yaml.safe_dump([{"name": "a", "model": "torchvision:resnet18"}, {"name": "a", "model": "timm:resnet18"}]))
    assert "the name 'a' is used twice" in run_zoo(built, path, tmp_path / "out").output
    result = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--models", str(path)])
    assert result.exit_code == 2 and "--models ZOO.yaml goes with --out DIR" in result.output


def test_a_zoo_or_leaderboard_never_takes_or_replaces_a_users_files(built: Path, tmp_path: Path) -> None:
    """A user's resnet.json in --out was taken as "scored before" and their table.md replaced;
    leaderboard --out replaced any leaderboard.md and fmr.png. Refused, before any scoring."""
    from helpers import assert_one_line_error

    zoo, out = zoo_file(tmp_path), tmp_path / "notes"
    out.mkdir()
    (out / "resnet.json").write_text('{"my": "notes"}')
    refused = run_zoo(built, zoo, out)
    assert_one_line_error(refused, f"--out {out}: resnet.json is there and was not written by 'build-benchmark score'")
    assert sorted(path.name for path in out.iterdir()) == ["resnet.json"]
    (out / "resnet.json").unlink()
    (out / "table.md").write_text("# my table\n")
    assert_one_line_error(run_zoo(built, zoo, out, "--overwrite"), "table.md is there and is not a zoo's table")
    assert (out / "table.md").read_text() == "# my table\n"
    (out / "table.md").unlink()
    run_zoo(built, zoo, out)  # the zoo's own files are its to skip or replace
    board = tmp_path / "board"
    board.mkdir()
    (board / "fmr.png").write_bytes(b"my picture")
    refused = CliRunner().invoke(main, ["-q", "leaderboard", str(out), "--out", str(board)])
    assert_one_line_error(refused, f"--out {board}: fmr.png is there and was not written by 'build-benchmark leaderboard'")
    assert (board / "fmr.png").read_bytes() == b"my picture"
    (board / "fmr.png").unlink()
    for _ in range(2):  # its own pair is replaced
        assert CliRunner().invoke(main, ["-q", "leaderboard", str(out), "--out", str(board)]).exit_code == 0
