"""The scorer: exact FMR arithmetic on hand-built benchmarks, agreement with build records,
white-box detection, leaderboard, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import hand_built_benchmark

from builder.benchmark import BenchmarkError
from builder.cli import main
from builder.errors import ComponentError
from builder.metrics import Outcomes, compute_metrics
from builder.score import score
from builder.trust import UntrustedCodeError

TINY_MODELS = Path(__file__).parent / "tiny_models.py"


# 10 samples: 8 originals right (SA 0.8); 6 perturbed, 3 of those still right; unperturbed keep x.
ROWS = [
    (0, 0, 0, True, 5), (0, 0, 1, True, 7), (1, 1, 1, True, 3), (1, 1, 2, True, 9), (2, 2, 2, True, 1),
    (2, 2, 0, True, 2), (0, 0, 0, False, 0), (1, 1, 1, False, 0), (2, 0, 0, False, 0), (1, 2, 2, False, 0),
]


def test_fmr_arithmetic_on_a_hand_built_benchmark(tmp_path: Path) -> None:
    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    result = score(bench, f"py:{TINY_MODELS}:color_net", bootstrap=200)
    assert result.n == 10
    assert result.sa == pytest.approx(0.8)
    assert result.pa_perturbed == pytest.approx(3 / 6)  # perturbed subset
    assert result.pa == pytest.approx(5 / 10)           # 3 perturbed + 2 unperturbed right
    assert result.fmr == pytest.approx(100 * 0.5 / 0.8)
    assert result.vr == pytest.approx(0.6)
    assert result.mean_steps == pytest.approx((5 + 7 + 3 + 9 + 1 + 2) / 6)
    assert result.white_box  # same weights as the recorded reference
    for key in ("sa", "pa", "pa_perturbed", "fmr", "vr", "mean_steps"):
        low, high = result.intervals[key]
        assert low <= getattr(result, key) <= high
    payload = result.to_json()
    assert {"n", "sa", "pa", "pa_perturbed", "fmr", "vr", "mean_steps", "white_box", "fmr_ci", "sa_ci", "pa_ci", "pa_perturbed_ci", "benchmark_id"} <= set(payload)
    assert "pa_all" not in payload and payload["fmr"] == pytest.approx(100 * payload["pa"] / payload["sa"])


def test_a_webdataset_only_benchmark_scores_like_parquet(tmp_path: Path) -> None:
    """Scoring reads through the format's reader: a tar-only build needs no Parquet."""
    parquet, tar = (score(hand_built_benchmark(tmp_path / fmt, ROWS, fmt=fmt), f"py:{TINY_MODELS}:color_net", bootstrap=0)
                    for fmt in ("parquet", "webdataset"))
    assert (tar.n, tar.sa, tar.pa, tar.pa_perturbed, tar.fmr, tar.white_box) == (parquet.n, parquet.sa, parquet.pa, parquet.pa_perturbed, parquet.fmr, parquet.white_box)
    assert tar.fmr == pytest.approx(100 * 0.5 / 0.8)
    with pytest.raises(BenchmarkError, match="built without original images"):
        score(hand_built_benchmark(tmp_path / "bare", ROWS, keep_originals=False, fmt="webdataset"), f"py:{TINY_MODELS}:color_net", bootstrap=0)


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    outcomes = Outcomes(labels, np.where(rng.random(200) < 0.9, labels, 0), np.where(rng.random(200) < 0.6, labels, 1), rng.random(200) < 0.8, rng.integers(0, 50, 200))
    first, again = compute_metrics(outcomes, seed=1), compute_metrics(outcomes, seed=1)
    other = compute_metrics(outcomes, seed=2)
    assert first == again and first["fmr_ci"] != other["fmr_ci"]
    assert first["fmr_ci"][0] < first["fmr"] < first["fmr_ci"][1]
    assert 1 < first["fmr_ci"][1] - first["fmr_ci"][0] < 30


def test_per_class_table(tmp_path: Path) -> None:
    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    result = score(bench, f"py:{TINY_MODELS}:color_net", bootstrap=0, with_per_class=True)
    by_class = {row["class_name"]: row for row in result.per_class}
    assert by_class["red"]["n"] == 3 and by_class["red"]["sa"] == 1.0 and by_class["red"]["pa"] == pytest.approx(2 / 3)
    assert by_class["blue"]["sa"] == pytest.approx(2 / 3)


def test_benchmark_without_originals_needs_a_source(tmp_path: Path) -> None:
    bench = hand_built_benchmark(tmp_path / "b", ROWS, keep_originals=False)
    with pytest.raises(BenchmarkError, match="built without original images; pass --source"):
        score(bench, f"py:{TINY_MODELS}:color_net", bootstrap=0)


def test_reference_model_agrees_with_the_build_records(tiny_recipe: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from builder.benchmark import open_benchmark
    from builder.score import load_model_for, predict, reference_spec

    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(out), "--no-progress"]).exit_code == 0
    bench = open_benchmark(out)
    with pytest.raises(UntrustedCodeError, match="trust-remote-code"):  # its spec is py: code, named by the manifest
        reference_spec(bench, "ref:cnn")
    model = load_model_for(bench, reference_spec(bench, "ref:cnn", trust_remote_code=True), "cpu", tmp_path / "cache", tiny_recipe.parent)
    on_images, on_originals = predict(model, bench, "cnn", device="cpu", batch_size=5, workers=2)
    for shard, path in enumerate(bench.shards("cnn")[1]):
        records = pq.read_table(path, columns=["pred_after", "pred_before"]).to_pydict()
        assert on_images[shard].tolist() == records["pred_after"]
        assert on_originals[shard].tolist() == records["pred_before"]
    result = score(bench, "ref:cnn", bootstrap=0, base_dir=tiny_recipe.parent, trust_remote_code=True)
    figures = json.loads((out / "manifest.json").read_text())["configs"]["cnn"]
    assert result.white_box
    assert (result.sa, result.pa, result.pa_perturbed, result.fmr) == pytest.approx((figures["sa"], figures["pa"], figures["pa_perturbed"], figures["fmr"]), abs=1e-5)
    assert figures["fmr"] == pytest.approx(100 * figures["pa"] / figures["sa"], abs=1e-3) and "pa_all" not in figures
    other = score(bench, f"py:{TINY_MODELS}:tiny_cnn", bootstrap=0)  # random weights: a different model
    assert not other.white_box


def test_a_ref_model_takes_its_relative_weights_from_the_source_recipes_folder(tiny_build: Path, tiny_recipe: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest records the reference model's checkpoint as the recipe had it ('theta.pt',
    beside the recipe): from another folder it was 'not found; train it first', and a spec with
    a train block would have trained a new model. --source RECIPE gives the folder."""
    from helpers import assert_one_line_error

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["-q", "score", "--benchmark", str(tiny_build), "--model", "ref:cnn", "--trust-remote-code", "--workers", "0", "--bootstrap", "0"]
    assert_one_line_error(CliRunner().invoke(main, args), f"ref:cnn: its weights {elsewhere}/theta.pt are not there (the manifest records "
                          f"checkpoint 'theta.pt', taken from {elsewhere}); pass --source with the recipe", "score never trains")
    found = CliRunner().invoke(main, [*args, "--source", str(tiny_recipe), "--json", "r.json"])
    assert found.exit_code == 0, found.output
    assert json.loads((elsewhere / "r.json").read_text())["results"][0]["white_box"]


def test_static_and_dynamic_halves_read_one_checkpoint(tiny_build: Path, tiny_recipe: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--dynamic beside --benchmark: one relative --checkpoint named the recipe folder's file for
    the dynamic half and the current directory's for the static one."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(tiny_build), "--dynamic", "--recipe", str(tiny_recipe),
                                       "--model", f"py:{TINY_MODELS}:tiny_cnn", "--checkpoint", "theta.pt", "--limit", "4",
                                       "--trust-remote-code", "--workers", "0", "--bootstrap", "0", "--json", "r.json"])
    assert result.exit_code == 0, result.output
    static, live = json.loads((elsewhere / "r.json").read_text())["results"]
    assert static["white_box"] and static["model_spec"]["checkpoint"] == str(tiny_recipe.parent / "theta.pt") and live["mode"] == "dynamic"


def test_ref_outside_score_against_a_benchmark_says_where_it_works(tiny_recipe: Path) -> None:
    """ref: in a zoo or with --dynamic was "unknown model scheme 'ref'", with no way forward."""
    from helpers import assert_one_line_error

    result = CliRunner().invoke(main, ["-q", "score", "--dynamic", "--recipe", str(tiny_recipe), "--model", "ref:cnn", "--limit", "2"])
    assert_one_line_error(result, "ref:cnn: ref:<config> names the model a config of a benchmark was built against, and only "
                          "'score --model' with '--benchmark' reads it", "configs.<config>.reference_model")


def test_score_cli_json_and_leaderboard(tmp_path: Path) -> None:
    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    runner = CliRunner()
    first = runner.invoke(main, ["-q", "score", "--benchmark", str(bench), "--model", f"py:{TINY_MODELS}:color_net", "--workers", "0",
                                 "--bootstrap", "100", "--json", str(tmp_path / "a.json"), "--per-class"])
    assert first.exit_code == 0, first.output
    assert "white-box" in first.output and "62.5" in first.output and "per class" in first.output
    spec = tmp_path / "flipped.yaml"
    spec.write_text(f"model: py:{TINY_MODELS}:tiny_cnn\nname: random\n")
    second = runner.invoke(main, ["-q", "score", "--benchmark", str(bench), "--model", str(spec), "--workers", "0", "--bootstrap", "100", "--json", str(tmp_path / "b.json")])
    assert second.exit_code == 0, second.output and "transfer" in second.output
    board = runner.invoke(main, ["-q", "leaderboard", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "board")])
    assert board.exit_code == 0, board.output
    table = (tmp_path / "board" / "leaderboard.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    fmrs = [float(line.split("|")[7].split("[")[0]) for line in rows]
    assert len(rows) == 2 and fmrs == sorted(fmrs, reverse=True)
    assert (tmp_path / "board" / "fmr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_leaderboard_lists_each_result_once_and_ties_share_a_rank(tmp_path: Path) -> None:
    """``leaderboard a.json a.json`` ranked one result 1st and 2nd; equal FMRs got ranks 1, 2, 3."""
    from builder.leaderboard import leaderboard_markdown, results_bytes, write_leaderboard

    def row(name: str, fmr: float, config: str = "c") -> dict[str, Any]:
        return {"benchmark": "b", "benchmark_id": "B1", "config": config, "model": "timm:m", "model_spec": {"model": "timm:m", "name": name},
                "name": name, "sa": 0.5, "pa": fmr / 200, "fmr": fmr, "mode": "static"}

    path = tmp_path / "a.json"
    path.write_bytes(results_bytes({"tool": {"name": "fmr-builder"}, "results": [row("x", 60.0), row("x", 60.0, config="d")]}))
    write_leaderboard([path, path, tmp_path], tmp_path / "board")
    ranked = [line.split(" | ")[:4] for line in (tmp_path / "board" / "leaderboard.md").read_text().splitlines() if line.startswith("| 1 ")]
    assert ranked == [["| 1", "x (`timm:m`)", "`b` (B1)", "c"], ["| 1", "x (`timm:m`)", "`b` (B1)", "d"]]  # each config once, tied
    table = leaderboard_markdown([row("a", 70.0), row("b", 50.0), row("c", 50.0), row("d", 40.0)])
    assert [line.split(" | ")[:2] for line in table.splitlines()[2:]] == [["| 1", "a (`timm:m`)"], ["| 2", "b (`timm:m`)"],
                                                                          ["| 2", "c (`timm:m`)"], ["| 4", "d (`timm:m`)"]]


def test_a_result_names_a_local_benchmark_by_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """score --benchmark b (relative): the result file records the dir as an absolute path, so
    report run from another folder finds it (it recorded 'b', which resolved from nowhere)."""
    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    monkeypatch.chdir(tmp_path)
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", "b", "--model", f"py:{TINY_MODELS}:color_net", "--workers", "0",
                                       "--bootstrap", "0", "--json", "out/a.json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "out" / "a.json").read_text())["results"][0]["benchmark"] == str(bench.resolve())


def test_a_model_with_sa_0_writes_strict_json_and_is_left_off_the_leaderboard(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """FMR = PA / SA is undefined when SA is 0: the result file says null (strict JSON, which
    browsers and other languages parse), and a leaderboard leaves that row out with a warning
    instead of refusing the file (as it did, calling NaN out of range)."""
    import json
    import math

    wrong = [(0, 1, 1, True, 2), (1, 2, 2, True, 3), (2, 0, 0, False, 50)]  # every original misread: SA 0
    runner = CliRunner()
    for name, rows in (("zero", wrong), ("good", ROWS)):
        bench = hand_built_benchmark(tmp_path / name, rows)
        scored = runner.invoke(main, ["-q", "score", "--benchmark", str(bench), "--model", f"py:{TINY_MODELS}:color_net", "--workers", "0",
                                      "--bootstrap", "50", "--json", str(tmp_path / f"{name}.json")])
        assert scored.exit_code == 0, scored.output

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a result file")

    [zero] = json.loads((tmp_path / "zero.json").read_text(), parse_constant=refuse)["results"]
    assert zero["sa"] == 0 and zero["fmr"] is None
    (tmp_path / "old.json").write_text(json.dumps({"results": [{**zero, "fmr": math.nan}]}))  # as written before: NaN
    with caplog.at_level("WARNING"):
        board = runner.invoke(main, ["-q", "leaderboard", *(str(tmp_path / f"{name}.json") for name in ("zero", "good", "old")),
                                     "--out", str(tmp_path / "board")])
    assert board.exit_code == 0, board.output
    assert sum("SA is 0, so FMR is undefined" in record.getMessage() for record in caplog.records) == 2
    table = (tmp_path / "board" / "leaderboard.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| 1 ")]) == 1 and "| 2 " not in table


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["-q", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def test_bad_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    empty = tmp_path / "empty"
    empty.mkdir()
    model = f"py:{TINY_MODELS}:color_net"
    assert "has no manifest.json" in one_line_error(["score", "--benchmark", str(empty), "--model", model])
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "cannot reach the Hub" in one_line_error(["score", "--benchmark", "someone/no-such-benchmark", "--model", model])
    message = one_line_error(["score", "--benchmark", str(bench), "--model", str(_spec(tmp_path, "num_classes: 5"))])
    assert f"the model has 5 classes but the benchmark {bench} has 3" in message
    import torch

    from tiny_models import tiny_cnn

    torch.save(tiny_cnn(3, width=4).state_dict(), tmp_path / "narrow.pt")
    message = one_line_error(["score", "--benchmark", str(bench), "--model", f"py:{TINY_MODELS}:tiny_cnn", "--checkpoint", str(tmp_path / "narrow.pt")])
    assert "does not fit the model" in message
    assert "unknown config" in one_line_error(["score", "--benchmark", str(bench), "--config", "nope", "--model", model])


def test_a_model_giving_other_widths_or_failing_on_the_images_is_one_line(tmp_path: Path) -> None:
    """A factory that ignored num_classes (five logits on a 3-class benchmark) was scored without
    a word, its argmax landing on classes the benchmark lacks; a model failing on the images'
    size was a traceback (and stopped a zoo)."""
    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    message = one_line_error(["score", "--benchmark", str(bench), "--model", f"py:{TINY_MODELS}:five_outputs", "--workers", "0"])
    n = 2 * len(ROWS)  # the benchmark images and their originals in one batch
    assert f"five_outputs: the model returned logits of shape ({n}, 5) for {n} images, expected ({n}, 3)" in message
    message = one_line_error(["score", "--benchmark", str(bench), "--model", f"py:{TINY_MODELS}:fixed_size", "--workers", "0"])
    assert f"fixed_size: failed on {n} images of shape (3, 8, 8): RuntimeError: mat1 and mat2 shapes cannot be multiplied" in message
    with pytest.raises(ComponentError, match=f"failed on {n} images"):
        score(bench, f"py:{TINY_MODELS}:fixed_size", bootstrap=0)


def test_the_same_weights_behind_other_preprocessing_are_not_white_box(tmp_path: Path) -> None:
    """White-box means the reference model's very function: its weights behind another
    normalisation or input size were called white-box (the fingerprint read persistent weights only)."""
    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    assert score(bench, f"py:{TINY_MODELS}:color_net", bootstrap=0).white_box
    for extra in ("preprocess: {mean: [0.9, 0, 0]}", "preprocess: {input_size: 16}"):
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"model: py:{TINY_MODELS}:color_net\n{extra}\n")
        assert not score(bench, str(spec), bootstrap=0).white_box, extra


def test_a_checkpoint_given_to_score_is_the_weights_never_a_reason_to_train(tmp_path: Path) -> None:
    """``score --model ref:X --checkpoint FILE`` kept the recorded spec's train block: the loader
    looked for FILE-<hash>, trained a new model there and scored it instead of FILE."""
    from builder.config import ModelSpec, TrainConfig
    from builder.score import as_model_spec

    recorded = ModelSpec(model=f"py:{TINY_MODELS}:tiny_cnn", checkpoint="theta.pt", train=TrainConfig(epochs=2))
    given = as_model_spec(recorded, str(tmp_path / "mine.pt"))
    assert given.train is None and given.checkpoint == str(tmp_path / "mine.pt")
    assert as_model_spec(recorded).train == TrainConfig(epochs=2)  # without a checkpoint, the spec as it is
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: py:{TINY_MODELS}:tiny_cnn\ntrain: {{epochs: 2}}\n")
    assert as_model_spec(str(spec), "mine.pt").train is None


def test_a_build_before_the_function_fingerprint_keeps_its_white_box_label(tmp_path: Path) -> None:
    """Builds before 0.2.1 recorded the persistent weights' fingerprint alone: their reference
    model is still white-box on them, and only on them."""
    from builder.checkpoints import persistent_weights_fingerprint
    from builder.components.preprocess import PreprocessedClassifier, Preprocessing

    from tiny_models import color_net

    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    manifest = json.loads((bench / "manifest.json").read_text())
    old = persistent_weights_fingerprint(PreprocessedClassifier(color_net(3), Preprocessing(input_size=8), 3, "x"))
    manifest["configs"]["ref"]["reference_weights_sha256"] = old
    for version, white in (("0.2.0", True), ("0.2.1", False)):
        (bench / "manifest.json").write_text(json.dumps({**manifest, "tool": {"name": "fmr-builder", "version": version}}))
        assert score(bench, f"py:{TINY_MODELS}:color_net", bootstrap=0).white_box is white, version


def _spec(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"model: py:{TINY_MODELS}:tiny_cnn\n{extra}\n")
    return path


def test_python_api_is_builder_score(tmp_path: Path) -> None:
    import builder

    result = builder.score(hand_built_benchmark(tmp_path / "b", ROWS), f"py:{TINY_MODELS}:color_net", bootstrap=0)
    assert type(result).__name__ == "ScoreResult" and result.fmr == pytest.approx(62.5)


def scored_color_net(bench: Path, out: Path, bootstrap: int) -> dict[str, Any]:
    """``score --json out`` of color_net on ``bench``: its one result row."""
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(bench), "--model", f"py:{TINY_MODELS}:color_net", "--workers", "0",
                                       "--bootstrap", str(bootstrap), "--json", str(out)])
    assert scored.exit_code == 0, scored.output
    row: dict[str, Any] = json.loads(out.read_text())["results"][0]
    return row


def test_card_leaderboard_from_results(tiny_build: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = scored_color_net(tiny_build, tmp_path / "a.json", 50)
    written = runner.invoke(main, ["-q", "card", str(tiny_build), "--results", str(tmp_path / "a.json"), "--repo-id", "org/tiny-fmr"])
    assert written.exit_code == 0, written.output
    card = (tiny_build / "README.md").read_text()
    assert "## Leaderboard" in card and f"| {result['fmr']:.1f} [" in card and "color_net" in card
    assert 'load_dataset("org/tiny-fmr", name="cnn"' in card
    assert "https://huggingface.co/datasets/org/tiny-fmr/resolve/main/cnn/test-{00000..00002}-of-00003.tar" in card
    assert json.loads((tiny_build / "leaderboard.json").read_text())[0]["fmr"] == result["fmr"]
    again = runner.invoke(main, ["-q", "card", str(tiny_build)])  # the stored leaderboard stays
    assert again.exit_code == 0 and "## Leaderboard" in (tiny_build / "README.md").read_text()

    other = hand_built_benchmark(tmp_path / "other", ROWS)
    rescored = runner.invoke(main, ["-q", "score", "--benchmark", str(other), "--model", f"py:{TINY_MODELS}:color_net", "--workers", "0",
                                    "--bootstrap", "0", "--json", str(tmp_path / "b.json")])
    assert rescored.exit_code == 0
    refused = runner.invoke(main, ["-q", "card", str(tiny_build), "--results", str(tmp_path / "b.json")])
    assert refused.exit_code == 2 and "not this one" in refused.output and "re-score" in refused.output


def _written_before_the_rename(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as ``score --json`` wrote it before: ``pa`` perturbed-only, ``pa_all`` the numerator."""
    old = {key: value for key, value in row.items() if not key.startswith("pa")}
    old.update(pa=row["pa_perturbed"], pa_all=row["pa"], pa_ci=row["pa_perturbed_ci"], pa_all_ci=row["pa_ci"])
    return old


def test_result_files_from_before_the_rename_still_load(tiny_build: Path, tmp_path: Path) -> None:
    """``pa`` is the FMR numerator everywhere; an old file (and an old manifest) reads the same."""
    from builder.leaderboard import load_results

    runner = CliRunner()
    new = scored_color_net(tiny_build, tmp_path / "new.json", 20)
    assert new["fmr"] == pytest.approx(100 * new["pa"] / new["sa"]) and "pa_perturbed" in new and "pa_all" not in new
    (tmp_path / "old.json").write_text(json.dumps({"results": [_written_before_the_rename(new)]}))
    (loaded,) = load_results([tmp_path / "old.json"])
    assert {key: loaded[key] for key in ("pa", "pa_perturbed", "pa_ci", "pa_perturbed_ci")} == {key: new[key] for key in ("pa", "pa_perturbed", "pa_ci", "pa_perturbed_ci")}
    board = runner.invoke(main, ["-q", "leaderboard", str(tmp_path / "old.json"), "--out", str(tmp_path / "board")])
    assert board.exit_code == 0, board.output
    assert f"| {100 * new['sa']:.1f} | {100 * new['pa']:.1f} | {new['fmr']:.1f} [" in (tmp_path / "board" / "leaderboard.md").read_text()
    manifest_path = tiny_build / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    figures = manifest["configs"]["cnn"]
    manifest["configs"]["cnn"] = {**{k: v for k, v in figures.items() if k != "pa_perturbed"}, "pa": figures["pa_perturbed"], "pa_all": figures["pa"]}
    manifest_path.write_text(json.dumps(manifest))
    written = runner.invoke(main, ["-q", "card", str(tiny_build), "--results", str(tmp_path / "old.json")])
    assert written.exit_code == 0, written.output
    card = (tiny_build / "README.md").read_text()
    assert f"| {100 * figures['sa']:.1f} | {100 * figures['pa']:.1f} | {figures['fmr']:.1f} | {100 * figures['pa_perturbed']:.1f} |" in card
    assert f"| {new['fmr']:.1f} [" in card


def test_a_benchmark_built_without_originals_scores_from_its_recipes_source(tiny_recipe: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """'score --source RECIPE' reads the originals from the recipe's source, here a .tar.gz shard:
    the same SA and FMR as the build that kept its originals, and the shard is read in one pass
    (it was once reopened, and inflated from its start, for every key). A recipe with another
    source, or a source whose samples changed, is refused."""
    import gzip

    import yaml
    from helpers import write_shard

    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    plain = tmp_path / "shard.tar"
    write_shard(plain, [(f"k{i:02d}", colors[i % 3], i % 3) for i in range(14)])
    (tmp_path / "shard.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["source"] = {"kind": "webdataset", "urls": "shard.tar.gz", "class_names": ["red", "green", "blue"]}
    scores, openings, real = {}, [], gzip.GzipFile.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        openings.append(1)
        real(self, *args, **kwargs)

    for keep in (True, False):
        recipe["output"] = {**recipe["output"], "keep_originals": keep}
        path = tmp_path / f"keep-{keep}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out = tmp_path / f"out-{keep}"
        assert CliRunner().invoke(main, ["-q", "run", str(path), "--out", str(out), "--no-progress"]).exit_code == 0
        if not keep:
            monkeypatch.setattr(gzip.GzipFile, "__init__", counting)
        scores[keep] = score(str(out), f"py:{TINY_MODELS}:color_net", bootstrap=0, batch_size=4, source_recipe=None if keep else str(path))
    assert len(openings) == 2  # indexing the shard, then one pass over it
    kept, sourced = scores[True], scores[False]
    assert (sourced.n, sourced.sa, sourced.pa, sourced.fmr) == (kept.n, kept.sa, kept.pa, kept.fmr) and kept.n == 14
    import builder.sources.base as sources_base

    opened_in, real_open = [], sources_base.open_source  # the source is read through --cache-dir, where the build cached its shards
    monkeypatch.setattr(sources_base, "open_source", lambda config, ctx: opened_in.append(ctx.cache_dir) or real_open(config, ctx))
    score(str(tmp_path / "out-False"), f"py:{TINY_MODELS}:color_net", bootstrap=0, source_recipe=str(path), cache_dir=tmp_path / "mine")
    assert opened_in == [tmp_path / "mine"]
    monkeypatch.undo()
    built_from = tmp_path / "keep-False.yaml"
    # another source: refused before a pixel is read (it would give SA of other images)
    other = dict(recipe, source={**recipe["source"], "urls": "other.tar"})
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(BenchmarkError, match=r"^--source .*other.yaml: its source.urls is 'other.tar', but the benchmark was built with "
                                             r"'shard.tar.gz'; give the recipe this benchmark was built from$"):
        score(str(tmp_path / "out-False"), f"py:{TINY_MODELS}:color_net", bootstrap=0, source_recipe=str(tmp_path / "other.yaml"))
    # the same recipe over data that changed since: other samples, or fewer
    for samples, message in (([(f"x{i:02d}", colors[i % 3], i % 3) for i in range(14)],
                              r"^--source: its sample 0 is shard.tar.gz/x00, but the benchmark's is shard.tar.gz/k00; "),
                             ([(f"k{i:02d}", colors[i % 3], i % 3) for i in range(5)],
                              r"^--source: its source has no sample 5 \(it has 5\); give the recipe this benchmark was built from$")):
        write_shard(plain, samples)
        (tmp_path / "shard.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
        with pytest.raises(BenchmarkError, match=message):
            score(str(tmp_path / "out-False"), f"py:{TINY_MODELS}:color_net", bootstrap=0, source_recipe=str(built_from))


def test_source_images_gives_the_images_of_the_indices_in_their_order(tmp_path: Path) -> None:
    """In one pass when the indices increase (a benchmark's keys), one by one otherwise; the same images either way."""
    from helpers import make_source

    from builder.score import source_images
    from builder.sources.decode import load_rgb

    source = make_source({"kind": "sklearn-digits"}, tmp_path)
    one_by_one = {i: load_rgb(next(source.items(i, i + 1)).load, 8) for i in (2, 5, 7, 30)}
    for order in ([2, 5, 7, 30], [30, 2, 7, 5]):
        assert all((got == one_by_one[i]).all() for i, got in zip(order, source_images(source, order, 8), strict=True))
    assert list(source_images(source, [], 8)) == []
    with pytest.raises(BenchmarkError, match=r"^--source: its source has no sample 100000 \(it has \d+\)"):
        list(source_images(source, [3, 100000], 8))


def test_two_models_of_one_name_stay_apart_in_the_matrix_and_the_chart() -> None:
    """One spec with two checkpoints gives two results of one name: the transfer matrix keeps a
    column for each (one used to overwrite the other), and the FMR chart a bar for each (equal
    labels on a categorical axis shared one bar)."""
    from types import SimpleNamespace

    from builder.leaderboard import fmr_figure
    from builder.reporting import format_transfer_matrix

    def result(checkpoint: str, config: str, fmr: float, white_box: bool) -> SimpleNamespace:
        return SimpleNamespace(name="cnn", model_spec={"model": "py:m.py:net", "checkpoint": checkpoint}, benchmark="b", config=config,
                               reference_model="py:m.py:net", fmr=fmr, white_box=white_box)

    results = [result("a.pt", "x", 0.0, True), result("b.pt", "x", 100.0, False), result("a.pt", "y", 50.0, False), result("b.pt", "y", 25.0, True)]
    matrix = format_transfer_matrix(results).splitlines()
    assert "cnn #1" in matrix[1] and "cnn #2" in matrix[1]
    assert matrix[2].split()[-2:] == ["0.0*", "100.0"] and matrix[3].split()[-2:] == ["50.0", "25.0*"]
    rows = [{"name": "cnn", "config": "x", "benchmark_id": "0123456789", "fmr": fmr, "white_box": False} for fmr in (10.0, 60.0)]
    figure = fmr_figure(rows)
    bars = figure.axes[0].patches
    assert len(bars) == 2 and bars[0].get_y() != bars[1].get_y()
    assert [tick.get_text() for tick in figure.axes[0].get_yticklabels()] == ["cnn on x #1", "cnn on x #2"]


def test_the_matrix_keeps_a_config_name_whole_beside_a_long_reference_path() -> None:
    """A row label longer than the column is cut in its middle: the config's name (what tells
    rows apart) stays whole. It used to keep only the label's end, so a reference model given as
    a long py: path cut the config's name, by how long the temp folder's name happened to be."""
    from types import SimpleNamespace

    from builder.reporting import format_transfer_matrix

    reference = "py:/" + "deep/" * 30 + "tiny_models.py:tiny_cnn"
    results = [SimpleNamespace(name="cnn", model_spec=None, benchmark="b", config=config, reference_model=reference,
                               fmr=50.0, white_box=True) for config in ("cnn-attributes", "cnn-pixel")]
    matrix = format_transfer_matrix(results).splitlines()
    assert [line.split()[0] for line in matrix[2:]] == ["cnn-attributes", "cnn-pixel"]
    assert all(line.split()[-1] == "50.0*" and "tiny_models.py:tiny_cnn)" in line and "..." in line for line in matrix[2:])
    assert len({line.index("50.0*") for line in matrix[2:]}) == 1  # the columns still line up


def test_a_model_yaml_takes_its_paths_from_its_own_folder(tiny_build: Path, tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--model FILE.yaml reads a relative checkpoint from the file's folder, as a model zoo file
    and a recipe do (it was read from wherever the command ran); --checkpoint typed on the
    command line stays relative to the current directory."""
    import yaml

    models = tiny_recipe.parent / "models"
    models.mkdir()
    (models / "cnn.yaml").write_text(yaml.safe_dump({"model": f"py:{TINY_MODELS}:tiny_cnn", "checkpoint": "../theta.pt", "name": "cnn"}))
    elsewhere = tmp_path / "far" / "away"  # where ../theta.pt is not
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    args = ["-q", "score", "--benchmark", str(tiny_build), "--workers", "0", "--bootstrap", "0"]
    from_file = CliRunner().invoke(main, [*args, "--model", str(models / "cnn.yaml")])
    assert from_file.exit_code == 0 and "white-box" in from_file.output, from_file.output
    monkeypatch.chdir(tiny_recipe.parent)
    typed = CliRunner().invoke(main, [*args, "--model", str(models / "cnn.yaml"), "--checkpoint", "theta.pt"])
    assert typed.exit_code == 0 and "white-box" in typed.output, typed.output


def test_a_hub_repo_mixing_two_builds_is_refused_not_scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard on the Hub that is not the one its manifest lists (another build's, left by an
    interrupted publish) was scored under the manifest's id without a word."""
    from hub_stub import HubStub, use_hub_stub

    first = hand_built_benchmark(tmp_path / "first", ROWS)
    second = hand_built_benchmark(tmp_path / "second", [(label, 2, 2, perturbed, steps) for label, _, _, perturbed, steps in ROWS])
    files = {path.relative_to(first).as_posix(): path.read_bytes() for path in first.rglob("*") if path.is_file()}
    shard = next(name for name in files if name.endswith(".parquet"))
    stub = HubStub("hf_" + "0" * 40).start()
    try:
        use_hub_stub(monkeypatch, stub, tmp_path / "hf-home", token=stub.token)
        stub.add_files("org/bench", files)
        assert score("org/bench", f"py:{TINY_MODELS}:color_net", bootstrap=0).fmr == score(first, f"py:{TINY_MODELS}:color_net", bootstrap=0).fmr
        stub.add_files("org/bench", {shard: (second / shard).read_bytes()})
        with pytest.raises(BenchmarkError, match=f"org/bench: {shard} on the Hub is not the file its manifest.json lists"):
            score("org/bench", f"py:{TINY_MODELS}:color_net", bootstrap=0)
    finally:
        stub.stop()


def test_a_specs_kwargs_are_part_of_white_box(tmp_path: Path) -> None:
    """The same weights built with other kwargs (timm's global_pool: max) compute another function:
    they were called white-box. A build before the fingerprint covered kwargs recorded it without
    them, and keeps its label."""
    from builder.checkpoints import weights_fingerprint
    from builder.components.preprocess import PreprocessedClassifier, Preprocessing

    from tiny_models import color_net

    (tmp_path / "nets.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(TINY_MODELS).parent)!r})\nfrom tiny_models import ColorNet\n\n"
        "class Sharper(ColorNet):\n    def __init__(self, num_classes, sharpness):\n        super().__init__(num_classes)\n"
        "        self.sharpness = sharpness\n\n    def forward(self, x):\n        return super().forward(x) * self.sharpness\n\n\n"
        "def sharper(num_classes, sharpness=1.0):\n    return Sharper(num_classes, sharpness)\n")
    bench = hand_built_benchmark(tmp_path / "b", ROWS)
    manifest = json.loads((bench / "manifest.json").read_text())
    (bench / "manifest.json").write_text(json.dumps({**manifest, "tool": {"name": "fmr-builder", "version": "0.2.2"}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: py:{tmp_path / 'nets.py'}:sharper\nkwargs: {{sharpness: -1.0}}\n")
    assert score(bench, f"py:{tmp_path / 'nets.py'}:sharper", bootstrap=0).white_box  # the reference's function: no kwargs
    assert not score(bench, str(spec), bootstrap=0).white_box  # its weights, another function
    kwargs_free = weights_fingerprint(PreprocessedClassifier(color_net(3), Preprocessing(input_size=8), 3, "x"), {})
    assert manifest["configs"]["ref"]["reference_weights_sha256"] == kwargs_free
    for version, white in (("0.2.1", True), ("0.2.2", False)):
        (bench / "manifest.json").write_text(json.dumps({**manifest, "tool": {"name": "fmr-builder", "version": version}}))
        assert score(bench, str(spec), bootstrap=0).white_box is white, version


def test_dynamic_scores_a_recipe_without_originals_and_save_takes_a_local_dir(tiny_recipe: Path, tmp_path: Path) -> None:
    """A recipe with keep_originals: false built the whole benchmark and then asked for --source
    (which --dynamic ignores); --save s3://... made a folder named 's3:' and a traceback; --save
    with other settings told to pass --overwrite, which score refused."""
    base = ["-q", "score", "--dynamic", "--recipe", str(tiny_recipe), "--model", f"py:{TINY_MODELS}:tiny_cnn", "--checkpoint", "theta.pt",
            "--bootstrap", "0"]
    result = CliRunner().invoke(main, [*base, "--limit", "2", "--set", "output.keep_originals=false"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*base, "--limit", "2", "--save", "s3://bucket/live"])
    assert result.exit_code == 2 and "'s3:/bucket/live' is a URL; --save takes a local dir" in result.output, result.output
    assert not (Path.cwd() / "s3:").exists()
    kept = tmp_path / "kept"
    assert CliRunner().invoke(main, [*base, "--limit", "2", "--save", str(kept)]).exit_code == 0
    again = CliRunner().invoke(main, [*base, "--limit", "3", "--save", str(kept)])
    assert again.exit_code == 2 and "different settings (limit: 2 -> 3)" in again.output, again.output
    replaced = CliRunner().invoke(main, [*base, "--limit", "3", "--save", str(kept), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((kept / "manifest.json").read_text())["limit"] == 3


def test_one_failing_model_of_several_dynamic_scores_keeps_the_others(tiny_recipe: Path, tmp_path: Path) -> None:
    """A good model, then one of another class count: the first's regeneration ran, and the
    second's error threw its result away (no table, no JSON)."""
    out = tmp_path / "two.json"
    result = CliRunner().invoke(main, ["-q", "score", "--dynamic", "--recipe", str(tiny_recipe), "--limit", "2", "--bootstrap", "0",
                                       "--model", f"py:{TINY_MODELS}:tiny_cnn", "--checkpoint", "theta.pt",
                                       "--model", f"py:{TINY_MODELS}:tiny_cnn", "--checkpoint", "missing.pt", "--json", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: 1 of 2 dynamic scores failed (the others are above): --model py:")
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 1 and rows[0]["mode"] == "dynamic" and rows[0]["model_spec"]["checkpoint"].endswith("theta.pt")


def test_a_dynamic_score_loads_the_model_as_its_build_did(tiny_recipe: Path, tmp_path: Path) -> None:
    """A model whose weights file does not fix every part (here: no checkpoint at all) was
    reloaded unseeded for scoring: 'mode dynamic' but not white-box, scored on a model other
    than the one the benchmark was generated against."""
    spec = tmp_path / "random.yaml"
    spec.write_text(f"model: py:{TINY_MODELS}:tiny_cnn\npretrained: false\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["-q", "score", "--dynamic", "--recipe", str(tiny_recipe), "--model", str(spec), "--limit", "3",
                                       "--bootstrap", "0", "--workers", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())["results"][0]
    assert row["mode"] == "dynamic" and row["white_box"] is True
