"""The seven-model sweep and its comparison table, as a user runs them."""

import json
import math

import pytest
from helpers import SHAKESPEARE, run

from lmzoo.reports.compare import COLUMNS, table

ZOO = "bigram,mlp,gpt,gpt_rope,block_scaling,moe,moa_moe"
TINY_SWEEP = [f"data.path={SHAKESPEARE}", "trainer=debug", "trainer.enable_progress_bar=false",
              "trainer.enable_model_summary=false", "trainer.max_steps=3", "trainer.val_check_interval=3",
              "data.batch_size=2", "data.val_batches=1", "block_size=16", "sample_tokens=0", "hydra.sweep.dir=sweep"]


def table_rows(path):
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in path.read_text().splitlines()[2:]]


def test_sweep_of_the_zoo_compares_every_model_and_each_samples(tmp_path):
    out = run("lmzoo.train", "-m", f"model={ZOO}", *TINY_SWEEP, cwd=tmp_path).stdout
    rows = table_rows(tmp_path / "sweep" / "comparison.md")
    assert [row[0] for row in rows] == ZOO.split(",")
    headers = [c.header for c in COLUMNS]
    for row in rows:
        record = dict(zip(headers, row))
        assert record["status"] == "done" and record["steps"] == "3" and float(record["best val/loss"]) < 5
        # tinyshakespeare is ASCII: one character token per byte, so bits per byte are nats / ln 2.
        assert float(record["best val/bpb"]) == pytest.approx(float(record["best val/loss"]) / math.log(2), abs=1e-3)
        assert int(record["active parameters"].replace(",", "")) <= int(record["parameters"].replace(",", ""))
    moe = dict(zip(headers, rows[5]))
    assert int(moe["active parameters"].replace(",", "")) < int(moe["parameters"].replace(",", ""))
    assert (tmp_path / "sweep" / "comparison.md").read_text().strip() in out
    # A fixed-context model samples with the same command (the others do in tests/test_zoo.py, in-process).
    # Sweep folders are named after their overrides, with no character of Hydra's grammar: the path goes as it is.
    (ckpt,) = (tmp_path / "sweep").glob("1_*model-mlp*/checkpoints/last.ckpt")
    text = run("lmzoo.generate", f"ckpt={ckpt}", "prompt=ROMEO:", "max_new_tokens=30", cwd=tmp_path).stdout
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= len("ROMEO:") + 25


def test_a_failed_job_keeps_the_others_in_the_table(tmp_path):
    result = run("lmzoo.train", "-m", "model=mlp", "model.activation=nosuch,relu", *TINY_SWEEP, cwd=tmp_path,
                 check=False)
    assert result.returncode != 0
    failed, done = table_rows(tmp_path / "sweep" / "comparison.md")
    assert failed[-2].startswith("failed: ") and "model.activation must be one of" in failed[-2]
    assert done[-2] == "done" and done[-1].startswith("1_")


def test_table_shows_runs_without_metrics(tmp_path):
    (tmp_path / "0_model=gpt" / ".hydra").mkdir(parents=True)
    (tmp_path / "1_model=moe").mkdir()
    summary = {"run": "1_model=moe", "model": "moe", "parameters": 1234567, "active_parameters": 654321,
               "best_val_loss": 1.23456, "best_val_bpb": 1.78109, "steps": 2000, "tokens_per_sec": 12345.6, "wall_time_s": 61.23,
               "status": "done", "flops": 1.5e14, "mfu": 0.1234}
    (tmp_path / "1_model=moe" / "summary.json").write_text(json.dumps(summary))
    out = run("lmzoo.compare", str(tmp_path), cwd=tmp_path).stdout
    assert out == (tmp_path / "comparison.md").read_text()
    assert ("| moe | 1,234,567 | 654,321 | 1.2346 | 1.7811 | 2,000 | 12,346 | 1.5e+14 | 12.3% | 61.2 s | done | "
            "1_model=moe |") in out
    assert "| - | - | - | - | - | - | - | - | - | - | no summary (running, or killed) | 0_model=gpt |" in out
    assert table([]).count("\n") == 1
    result = run("lmzoo.compare", str(tmp_path / "missing"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "is not a folder" in result.stderr and "Traceback" not in result.stderr
