"""generate, evaluate, inspect and plot on a tiny checkpoint, as a user runs them.

The commands run in-process on the composed real configs; one test runs generate in a subprocess.
"""

import json
import math
import shutil
import sys

import pytest
from helpers import SHAKESPEARE, compose_config, compose_train, run
from omegaconf import OmegaConf

from lmzoo.cli.describe import describe
from lmzoo.cli.evaluate import evaluate_checkpoint as evaluate
from lmzoo.cli.evaluate import main as evaluate_main
from lmzoo.cli.generate import sample
from lmzoo.cli.plot import main as plot_main
from lmzoo.errors import UserError
from lmzoo.reports.plot import load_runs, plot
from lmzoo.training.run import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run folder (checkpoints, TensorBoard logs, .hydra/config.yaml), trained once for every test here."""
    workdir = tmp_path_factory.mktemp("inference")
    cfg = compose_train(workdir)
    train(cfg)
    # Hydra writes the run's config there when the command line trains; evaluate and plot read it.
    (workdir / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, workdir / "run" / ".hydra" / "config.yaml")
    return workdir / "run"





def test_generate_command_line_takes_prompt_files_lists_and_out(trained, tmp_path):
    (tmp_path / "prompt.txt").write_text("KING:\n")
    result = run("lmzoo.generate", f"ckpt={trained}/checkpoints/best.ckpt", "prompt=[ROMEO:,@prompt.txt]",
                 "num_samples=2", "max_new_tokens=25", "top_p=0.9", "repetition_penalty=1.3", "--out", "a.jsonl",
                 cwd=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [("ROMEO:", 0), ("ROMEO:", 1), ("KING:\n", 0), ("KING:\n", 1)]
    assert all(len(r["completion"]) == 25 and r["stop_reason"] == "length" for r in records)
    assert result.stdout == ""
    assert "Transformer (n_layer 2, n_head 2, n_embd 32, block_size 32)" in result.stderr
    assert "char tokenizer (65 symbols) | 20 steps | best val loss" in result.stderr


def test_generate_streams_every_sample_in_order(trained, capsys):
    sample(compose_config("generate", f"ckpt={trained}/checkpoints/best.ckpt", "prompt=[ROMEO:,JULIET:]",
                          "num_samples=2", "max_new_tokens=25", "temperature=0"))
    samples = capsys.readouterr().out.removesuffix("\n").split("\n---------------\n")
    assert [s.split(":")[0] for s in samples] == ["ROMEO", "ROMEO", "JULIET", "JULIET"]
    assert samples[0] == samples[1] and samples[2] == samples[3]
    assert len(samples[0]) == len("ROMEO:") + 25 and len(samples[2]) == len("JULIET:") + 25


def test_a_seed_repeats_its_samples_and_stop_strings_end_them(trained, tmp_path):
    def samples(*overrides):
        out = tmp_path / "samples.jsonl"
        sample(compose_config("generate", f"ckpt={trained}/checkpoints/best.ckpt", "prompt=ROMEO:", "num_samples=4",
                              "max_new_tokens=60", "temperature=1.0", f"out={out}", *overrides))
        return [json.loads(line) for line in out.read_text().splitlines()]

    first, again, other = samples("seed=7"), samples("seed=7"), samples("seed=8")
    assert first == again != other
    assert len({r["completion"] for r in first}) == 4
    stopped = samples("seed=7", "stop=[e,a]")
    for full, cut in zip(first, stopped):
        text = full["completion"]
        end = min((text.find(s) for s in "ea" if s in text), default=None)
        assert cut["completion"] == text[:end]
        assert cut["stop_reason"] == ("length" if end is None else "stop")
    assert any(cut["stop_reason"] == "stop" for cut in stopped)
    lines = samples("seed=7", "stop='\\n'")
    assert [r["completion"] for r in lines] == [r["completion"].split("\n")[0] for r in first]


def test_evaluate_covers_the_whole_validation_split_deterministically(trained, capsys):
    first = evaluate(compose_config("evaluate", f"ckpt={trained}/checkpoints/best.ckpt"))
    printed = capsys.readouterr().out
    saved = json.loads((trained / "checkpoints/best.eval.shakespeare_char.json").read_text())
    again = evaluate(compose_config("evaluate", f"ckpt={trained}/checkpoints/best.ckpt"))
    meta = json.loads((trained.parent / "data/shakespeare_char/char/meta.json").read_text())["splits"]["val"]
    assert saved == first == again
    assert saved["tokens"] == meta["tokens"] - 1 and saved["bytes"] == meta["bytes"]
    assert saved["perplexity"] == pytest.approx(math.exp(saved["loss"]))
    assert saved["bits_per_byte"] == pytest.approx(saved["loss"] / math.log(2) * meta["tokens"] / meta["bytes"])
    assert "Transformer" in printed and f"{saved['loss']:.4f}" in printed and "bits/byte" in printed
    in_bigger_batches = evaluate(compose_config("evaluate", f"ckpt={trained}/checkpoints/best.ckpt", "batch_size=100"))
    assert in_bigger_batches["loss"] == pytest.approx(saved["loss"], abs=1e-6)


def test_evaluate_refuses_data_with_another_tokenizer(trained, tmp_path):
    cfg = compose_config("evaluate", f"ckpt={trained}/checkpoints/best.ckpt", "data=shakespeare",
                         f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path}")
    with pytest.raises(UserError, match=r"^data set 'shakespeare' is tokenized differently from the checkpoint; "
                                        r"evaluate on data the model was trained with \(char tokenizer"):
        evaluate(cfg)
    # Refused before any data was prepared.
    assert not (tmp_path / "shakespeare").exists()


def test_evaluate_on_a_text_file_alone_uses_the_checkpoints_tokenizer(trained, tmp_path, monkeypatch, capsys):
    text = SHAKESPEARE.read_text()[:30_000]
    (tmp_path / "act.txt").write_text(text)
    monkeypatch.setattr(sys, "argv", ["evaluate", f"ckpt={trained}/checkpoints/best.ckpt", f"data.path={tmp_path / 'act.txt'}",
                                      f"paths.data_dir={tmp_path / 'data'}"])
    evaluate_main()
    saved = json.loads((trained / "checkpoints/best.eval.act.json").read_text())
    # Validation: the first half of the held-out tenth.
    val_bytes = int((len(text) - int(len(text) * 0.9)) * 0.5)
    assert saved["data"] == "act" and saved["bytes"] == val_bytes and saved["tokens"] == val_bytes - 1
    assert (tmp_path / "data" / "act" / "char" / "meta.json").is_file()


def test_describe_prints_the_full_hyper_parameters(trained):
    out = describe(str(trained / "checkpoints/best.ckpt"))
    assert "architecture: lmzoo.models.transformer.TransformerConfig" in out and "  positions: rope" in out
    assert all(line in out for line in ("  n_layer: 2", "  n_embd: 32", "  block_size: 32", "  warmup_steps: 2"))
    assert "global_step: 20" in out and "KV cache at block_size 32 in fp32: 512 B per token" in out


def test_plot_draws_the_scalars_of_the_event_files(trained, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    sweep = tmp_path / "sweep"
    shutil.copytree(trained, sweep / "0_real")
    with SummaryWriter(sweep / "1_written" / "tensorboard") as writer:
        for step, loss in [(0, 4.0), (10, 3.0), (20, 2.5)]:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("val/loss", loss + 0.5, step)
    plot_main([str(sweep), "--out", str(tmp_path / "loss.png")])
    assert (tmp_path / "loss.png").stat().st_size > 10_000

    events = EventAccumulator(str(trained / "tensorboard"))
    events.Reload()
    figure = plot(load_runs([sweep]))
    by_steps, by_tokens = figure.axes[:2]
    lines = {line.get_gid(): line for line in by_steps.get_lines()}
    for tag in ("train/loss", "val/loss"):
        logged = events.Scalars(tag)
        assert list(lines[f"0_real:{tag}"].get_xdata()) == [e.step for e in logged]
        assert list(lines[f"0_real:{tag}"].get_ydata()) == [e.value for e in logged]
    assert list(lines["1_written:val/loss"].get_ydata()) == [4.5, 3.5, 3.0]
    tokens = {line.get_gid(): list(line.get_xdata()) for line in by_tokens.get_lines()}
    # Lightning logs the validation after the n-th step at step n - 1: n steps of 4 x 32 tokens.
    assert tokens["0_real:val/loss"] == [(e.step + 1) * 4 * 32 for e in events.Scalars("val/loss")]
    assert "1_written:train/loss" not in tokens
    bars = figure.axes[2]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["0_real", "1_written"]
    assert [b.get_height() for b in bars.patches] == [min(e.value for e in events.Scalars("val/loss")), 3.0]
