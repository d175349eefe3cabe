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
    assert all(f"| {name} (`" in table for name in ("color", "cnn", "cnn-wide", "resnet")) and "| broken" not in table
    assert "Not in the table:\n\n- broken: failed in this run: torchvision:resnet81: unknown" in table
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


# ----------------------------------------------------------------------------- score_zoo, no model run


class FakeResult:
    """A ScoreResult as score_zoo writes it (its ``to_json``), without scoring a model."""

    def __init__(self, spec, benchmark_id: str, config: str, fmr: float) -> None:
        self.row = {"benchmark": "b", "benchmark_id": benchmark_id, "config": config, "reference_model": "ref", "model": spec.model,
                    "model_spec": spec.model_dump(mode="json"), "name": spec.config_name, "white_box": False, "n": 4,
                    "sa": 0.5, "pa": fmr / 200, "pa_perturbed": 0.0, "fmr": fmr, "vr": 0.5, "mean_steps": 1.0, "mode": "static"}

    def to_json(self) -> dict:
        return dict(self.row)


def fake_scorer(planned: frozenset, fmr: float = 50.0, fail: tuple[str, ...] = (), crash: tuple[str, ...] = ()):
    """``score_one`` giving every spec the same FMR on each planned pair; ``fail``: names that
    raise a BuilderError, ``crash``: names that raise RuntimeError. Its ``calls`` lists the names."""
    from builder.errors import BuilderError

    def score_one(spec):
        score_one.calls.append(spec.config_name)
        if spec.config_name in fail:
            raise BuilderError(f"{spec.config_name}: cannot load")
        if spec.config_name in crash:
            raise RuntimeError("forward blew up")
        return [FakeResult(spec, benchmark_id, config, fmr) for benchmark_id, config in sorted(planned)]

    score_one.calls = []
    return score_one


def specs(**kwargs_of: dict) -> list:
    from builder.config import ModelSpec

    return [ModelSpec(name=name, model="timm:resnet18", kwargs=kwargs) for name, kwargs in kwargs_of.items()]


def test_a_file_of_another_benchmark_config_or_spec_is_refused_not_skipped(tmp_path: Path) -> None:
    """A DIR first scored on B1 was "scored before" for B2 (0 scored, table.md of B1's figures),
    and so was an entry whose spec was edited. Such a file is refused before any model runs."""
    import pytest

    from builder.errors import BuilderError
    from builder.model_zoo import score_zoo

    out, b1, b2 = tmp_path / "out", frozenset({("B1", "c")}), frozenset({("B2", "c")})
    zoo = specs(a={}, b={})
    assert score_zoo(zoo, out, fake_scorer(b1), planned=b1).scored == ["a", "b"]
    table = (out / "table.md").read_text()
    same = fake_scorer(b1)
    assert score_zoo(zoo, out, same, planned=b1).skipped == ["a", "b"] and same.calls == []
    for planned, zoo_now in ((b2, zoo), (b1 | b2, zoo), (frozenset({("B1", "other")}), zoo), (b1, specs(a={"width": 4}, b={}))):
        untouched = fake_scorer(planned)
        with pytest.raises(BuilderError, match=r"a\.json holds results of another benchmark, config or model spec; .*--overwrite"):
            score_zoo(zoo_now, out, untouched, planned=planned)
        assert untouched.calls == [] and (out / "table.md").read_text() == table
    payload = json.loads((out / "b.json").read_text())
    payload["results"][0]["mode"] = "dynamic"
    (out / "b.json").write_text(json.dumps(payload))
    with pytest.raises(BuilderError, match=r"b\.json holds results of another"):
        score_zoo(zoo, out, fake_scorer(b1), planned=b1)
    again = score_zoo(zoo, out, fake_scorer(b2, fmr=80.0), planned=b2, overwrite=True)
    assert again.scored == ["a", "b"]
    assert all(row["benchmark_id"] == "B2" for name in "ab" for row in json.loads((out / f"{name}.json").read_text())["results"])
    table = (out / "table.md").read_text()
    assert table.count("(B2) | c | 50.0 | 40.0 | 80.0 |") == 2 and "(B1)" not in table


def test_a_model_failing_with_overwrite_leaves_the_table_but_keeps_its_file(tmp_path: Path) -> None:
    """With --overwrite, a model that now failed kept its old row in table.md though listed as failed."""
    from builder.model_zoo import score_zoo

    out, planned = tmp_path / "out", frozenset({("B1", "c")})
    zoo = specs(a={}, b={})
    score_zoo(zoo, out, fake_scorer(planned), planned=planned)
    old = (out / "b.json").read_bytes()
    outcome = score_zoo(zoo, out, fake_scorer(planned, fail=("b",)), planned=planned, overwrite=True)
    assert outcome.scored == ["a"] and list(outcome.failed) == ["b"]
    table = (out / "table.md").read_text()
    assert "| a (`" in table and "| b (`" not in table
    assert "Not in the table:\n\n- b: failed in this run: b: cannot load; its earlier b.json is kept, not shown" in table
    assert (out / "b.json").read_bytes() == old


def test_an_unexpected_error_still_writes_the_table_of_what_was_scored(tmp_path: Path) -> None:
    """Only BuilderError is a model's failure; anything else (a bug) stops the zoo, but table.md
    then shows the models this run scored, not an older table or none."""
    import pytest

    from builder.model_zoo import score_zoo

    out, planned = tmp_path / "out", frozenset({("B1", "c")})
    with pytest.raises(RuntimeError, match="forward blew up"):
        score_zoo(specs(a={}, b={}, c={}), out, fake_scorer(planned, crash=("b",)), planned=planned)
    table = (out / "table.md").read_text()
    assert "| a (`" in table and "- b: not scored: the run stopped before it was done; run the zoo again" in table
    assert "- c: not scored" in table and sorted(path.name for path in out.glob("*.json")) == ["a.json"]
