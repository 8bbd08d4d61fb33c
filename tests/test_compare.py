"""The sweep of the whole zoo, a sweep over seeds and their comparison tables and report, as a user runs them."""

import json
import math
import shlex

import pytest
from helpers import PRESETS, SHAKESPEARE, markdown_tables, run

from lmzoo.reports.compare import RUN_COLUMNS, read_sweep, table, tables

TINY_SWEEP = [f"data.path={SHAKESPEARE}", "trainer=debug", "trainer.enable_progress_bar=false",
              "trainer.enable_model_summary=false", "trainer.max_steps=3", "trainer.val_check_interval=3",
              "data.batch_size=2", "data.val_batches=1", "block_size=16", "sample_tokens=0", "hydra.sweep.dir=sweep"]


def run_rows(path):
    """The rows of the table of runs (the second table) in comparison.md."""
    return markdown_tables(path.read_text())[-1]


def test_sweep_of_the_zoo_compares_every_model_and_each_samples(tmp_path):
    out = run("lmzoo.train", "-m", f"model={','.join(PRESETS)}", *TINY_SWEEP, cwd=tmp_path).stdout
    ranked, rows = markdown_tables((tmp_path / "sweep" / "comparison.md").read_text())
    assert [row["model"] for row in rows] == PRESETS
    assert sorted(row["model"] for row in ranked) == PRESETS
    assert all(row["n"] == "1" and row["vs best"] in ("best", "n = 1: no significance can be claimed") for row in ranked)
    for record in rows:
        assert record["status"] == "done" and record["steps"] == "3" and float(record["best val/loss"]) < 5
        # tinyshakespeare is ASCII: one character token per byte, so bits per byte are nats / ln 2.
        assert float(record["best val/bpb"]) == pytest.approx(float(record["best val/loss"]) / math.log(2), abs=1e-3)
        assert int(record["active parameters"].replace(",", "")) <= int(record["parameters"].replace(",", ""))
    (moe,) = (row for row in rows if row["model"] == "moe")
    assert int(moe["active parameters"].replace(",", "")) < int(moe["parameters"].replace(",", ""))
    assert (tmp_path / "sweep" / "comparison.md").read_text().strip() in out
    # A fixed-context model samples with the same command (the others do in tests/test_zoo.py, in-process).
    # Sweep folders are named after their overrides, with no character of Hydra's grammar: the path goes as it is.
    (ckpt,) = (tmp_path / "sweep").glob("*_model-mlp_*/checkpoints/last.ckpt")
    text = run("lmzoo.generate", f"ckpt={ckpt}", "prompt=ROMEO:", "max_new_tokens=30", cwd=tmp_path).stdout
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= len("ROMEO:") + 25


def test_a_sweep_over_seeds_pools_them_keeps_failed_jobs_and_writes_its_report(tmp_path):
    task = ["model=mlp", "model.activation=nosuch,relu", "seed=1,2", *TINY_SWEEP[:-1]]
    result = run("lmzoo.train", "-m", *task, TINY_SWEEP[-1], cwd=tmp_path, check=False)
    # The sweep ends with the failed jobs' mistake in one line, naming the fix.
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        "error: model.activation must be one of")
    sweep = tmp_path / "sweep"
    (ranked,), runs = markdown_tables((sweep / "comparison.md").read_text())
    assert [r["status"][:7] for r in runs] == ["failed:", "failed:", "done", "done"]
    assert "model.activation must be one of" in runs[0]["status"]
    # Runs of one model in settings of their own: labelled by what differs (the failed jobs wrote no
    # provenance.json; their .hydra/config.yaml stands in for it).
    assert [r["model"] for r in runs] == ["mlp (model.activation=nosuch)"] * 2 + ["mlp (model.activation=relu)"] * 2
    assert [r["seed"] for r in runs] == ["1", "2", "1", "2"]
    # The two seeds of relu are one row: their mean and standard deviation; no other setting to test against.
    losses = [float(r["best val/loss"]) for r in runs[2:]]
    mean, sd = (float(v) for v in ranked["best val/loss"].split(" ± "))
    assert mean == pytest.approx(sum(losses) / 2, abs=1e-4) and sd == pytest.approx(abs(losses[0] - losses[1]) / 2 ** 0.5, abs=2e-4)
    assert (ranked["rank"], ranked["n"], ranked["vs best"]) == ("1", "2", "best")
    report = (sweep / "report.md").read_text()
    assert f"In `{tmp_path}`:\n\n```bash\n{shlex.join(['python', '-m', 'lmzoo.train', '-m', TINY_SWEEP[-1], *task])}\n```" in report
    assert (sweep / "comparison.md").read_text().strip() in report
    assert "](val_loss.png)" in report and (sweep / "val_loss.png").stat().st_size > 10_000

    # The same sweep again is refused before it writes anything; with resume=auto each job continues its run.
    again = run("lmzoo.train", "-m", *task, TINY_SWEEP[-1], cwd=tmp_path, check=False)
    assert again.returncode == 2 and "sweep already holds a sweep" in again.stderr.strip().splitlines()[-1]
    assert (sweep / "report.md").read_text() == report
    finished = run_rows(sweep / "comparison.md")[2:]
    records = sorted(sweep.glob("*_model.activation-relu_*/*.json"))
    written = {path: path.stat().st_mtime_ns for path in records}
    resumed = run("lmzoo.train", "-m", *task, "resume=auto", TINY_SWEEP[-1], cwd=tmp_path, check=False)
    assert "resume=auto" in (sweep / "report.md").read_text() and "already holds" not in resumed.stderr
    assert [r["steps"] for r in run_rows(sweep / "comparison.md")] == ["-", "-", "3", "3"]
    # The finished runs are left as they are: their summary and provenance (commit, config) still describe the runs
    # that trained, and their rows are the same, MFU included.
    assert resumed.stderr.count("already ended at step 3 (done); it is left as it is") == 2
    assert [p.name for p in records] == ["provenance.json", "summary.json"] * 2
    assert {path: path.stat().st_mtime_ns for path in records} == written
    assert run_rows(sweep / "comparison.md")[2:] == finished and all(r["MFU"] not in ("-", "0%") for r in finished)


@pytest.mark.parametrize("second, warning", [
    ({"name": "tinystories", "path": "stories.txt", "tokenizer": {"kind": "char"}}, "these runs trained on different text "
     "(shakespeare, tinystories): neither their losses nor their bits per byte compare"),
    ({"name": "shakespeare", "path": "input.txt", "tokenizer": {"kind": "tiktoken", "name": "gpt2"}},
     "ranked by val/loss across tokenizers, which does not compare"),
])
def test_compare_warns_where_the_ranked_runs_do_not_compare(tmp_path, second, warning):
    first = {"name": "shakespeare", "path": "input.txt", "tokenizer": {"kind": "char"}}
    for index, data in enumerate([first, second]):
        run_dir = tmp_path / f"{index}_run"
        run_dir.mkdir()
        # Runs of an older release: no bits per byte, so they are ranked by loss.
        (run_dir / "summary.json").write_text(json.dumps({"model": "gpt", "best_val_loss": 2.0 + index}))
        (run_dir / "provenance.json").write_text(json.dumps({"config": {"seed": 1, "data": data}}))
    text = run("lmzoo.compare", str(tmp_path), cwd=tmp_path).stdout
    assert f"Warning: {warning}" in text
    # Runs of one text and tokenizer have no warning.
    (tmp_path / "1_run" / "provenance.json").write_text(json.dumps({"config": {"seed": 2, "data": first}}))
    assert "Warning" not in run("lmzoo.compare", str(tmp_path), cwd=tmp_path).stdout


def test_table_shows_runs_without_metrics(tmp_path):
    (tmp_path / "0_model=gpt" / ".hydra").mkdir(parents=True)
    (tmp_path / "1_model=moe").mkdir()
    summary = {"run": "1_model=moe", "model": "moe", "parameters": 1234567, "active_parameters": 654321,
               "best_val_loss": 1.23456, "best_val_bpb": 1.78109, "steps": 2000, "tokens_per_sec": 12345.6, "wall_time_s": 61.23,
               "status": "done", "flops": 1.5e14, "mfu": 0.1234}
    (tmp_path / "1_model=moe" / "summary.json").write_text(json.dumps(summary))
    out = run("lmzoo.compare", str(tmp_path), cwd=tmp_path).stdout
    assert out == (tmp_path / "comparison.md").read_text()
    # A run without provenance or seed; it has FLOPs and MFU, the job that never wrote a summary has nothing.
    assert "| 1 | moe (1_model=moe) | 1 | 1.7811 | 1.2346 | best | 1,234,567 | 1.50e+14 | 61.2 s | 12,346 | 12.3% |" in out
    assert ("| moe (1_model=moe) | - | - | 1,234,567 | 654,321 | 1.2346 | 1.7811 | 2,000 | 1.50e+14 | 12,346 | 12.3% | 61.2 s | "
            "done | 1_model=moe |") in out
    assert "| 0_model=gpt | - | - | - | - | - | - | - | - | - | - | - | no summary (running, or killed) | 0_model=gpt |" in out
    assert table([], RUN_COLUMNS).count("\n") == 1
    result = run("lmzoo.compare", str(tmp_path / "missing"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_compare_says_where_a_models_best_lies_around_its_tuned_rate(tmp_path):
    """experiment=reference_bracket's runs beside the comparison's: hybrid is best at its tuned rate, between its
    neighbours (bracketed); mlp is best above it (not bracketed); gpt, run at its tuned rate only, is not named."""
    runs = [("hybrid", "chosen", 2.2e-3, [2.00, 2.02]), ("hybrid", "lower", 1.3e-3, [2.10]),
            ("hybrid", "upper", 4e-3, [2.05]), ("mlp", "chosen", 1.3e-2, [1.80, 1.82]), ("mlp", "upper", 2.2e-2, [1.70]),
            ("gpt", "chosen", 2.2e-3, [2.3])]
    for number, (model, at, lr, losses) in enumerate(runs):
        for seed, loss in enumerate(losses, 1):
            run_dir = tmp_path / f"{number}_{seed}"
            run_dir.mkdir()
            (run_dir / "summary.json").write_text(json.dumps({"model": model, "best_val_loss": loss,
                                                              "best_val_bpb": loss * 1.44, "tuned": {"optim.lr": lr}}))
            config = {"seed": seed, "model": {"name": model}, "optim": {"lr": lr}, "tuned": "tuned.yaml", "tuned_at": at}
            (run_dir / "provenance.json").write_text(json.dumps({"config": config}))
    text = tables(read_sweep(tmp_path))
    assert text.split("\n\nRuns:")[0].split("\n\n")[-2:] == [
        "Where the best lies, by mean best val/bpb at the tuned value and at the searched values beside the best "
        "(tuned_at):",
        "- mlp (chosen optim.lr=0.013 2.6064, upper optim.lr=0.022 2.4480): best at the upper value: the optimum lies "
        "above the tuned value at this budget, not bracketed.\n"
        "- hybrid (chosen optim.lr=0.0022 2.8944, lower optim.lr=0.0013 3.0240, upper optim.lr=0.004 2.9520): best at "
        "the tuned value: the optimum is bracketed at this budget."]
