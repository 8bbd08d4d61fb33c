"""Every entry point refuses bad input with one line, no traceback, and leaves the user's files alone.

Each row: the entry point, its arguments, a piece of the expected line, and the files that must stay
unchanged. `{tmp}` stands for the test's folder, `{ckpt}` for a trained checkpoint.
"""

import hashlib
import importlib
import sys

import pytest
import torch
from helpers import SHAKESPEARE, TINY, compose_train

from lmzoo.training.run import train

TRAIN = [f"data.path={SHAKESPEARE}", "paths.data_dir={tmp}/data", "hydra.run.dir={tmp}/run", *TINY]
RESUME = [*TRAIN, "ckpt_path={ckpt}"]

CASES = [
    # train
    ("train", [*TRAIN, "model.n_layr=2"], "model has no key n_layr (did you mean n_layer?)", []),
    ("train", [*TRAIN, "n_layer=2"], "the config has no key n_layer", []),
    ("train", [*TRAIN, "block_size=many"], "block_size must be an integer", []),
    ("train", [*TRAIN, "model=transformer9"], "model=transformer9 is not an option; choose one of bigram,", []),
    ("train", [*TRAIN, "model.n_layer=abc"], "model.n_layer must be an integer, got 'abc'", []),
    ("train", [*TRAIN, "model.n_embd=30", "model.n_head=4"], "model.n_embd must be a positive multiple of n_head (4)",
     []),
    ("train", [*TRAIN, "block_size=0"], "block_size must be positive, got 0", []),
    ("train", [*TRAIN, "data.batch_size=-1"], "data.batch_size must be positive", []),
    ("train", [*TRAIN, "resume=sometimes"], "resume='sometimes' is not understood", []),
    ("train", [*TRAIN, "ckpt_path={tmp}/missing.ckpt"], "does not exist; pass ckpt_path=PATH", []),
    ("train", [*TRAIN, "ckpt_path={tmp}/truncated.ckpt"], "not a readable checkpoint", ["truncated.ckpt"]),
    ("train", [*TRAIN, "ckpt_path={tmp}/old.ckpt"], "was written by lmzoo 0.0.1", ["old.ckpt"]),
    ("train", [*RESUME, "tokenizer=gpt2"], "was trained with the char tokenizer (65 symbols), but the data uses the tiktoken gpt2",
     ["ckpt/last.ckpt"]),
    # generate
    ("generate", ["ckpt={tmp}/missing.ckpt"], "does not exist; pass a .ckpt file", []),
    ("generate", ["ckpt={tmp}/truncated.ckpt"], "it may be truncated", ["truncated.ckpt"]),
    ("generate", ["ckpt={tmp}/old.ckpt"], "which this lmzoo 0.2.0 cannot read", ["old.ckpt"]),
    ("generate", [], "ckpt is required; pass ckpt=...", []),
    ("generate", ["ckpt={tmp}/prompt.txt"], "not a readable checkpoint", ["prompt.txt"]),
    ("generate", ["ckpt={ckpt}", "top_k=0"], "top_k must be a positive integer or null, got 0", []),
    ("generate", ["ckpt={ckpt}", "temperature=-0.5"], "temperature must be >= 0, got -0.5", []),
    ("generate", ["ckpt={ckpt}", "top_p=0"], "top_p must lie in (0, 1] or be null, got 0", []),
    ("generate", ["ckpt={ckpt}", "top_p=1.5"], "top_p must lie in (0, 1] or be null, got 1.5", []),
    ("generate", ["ckpt={ckpt}", "max_new_tokens=-1"], "max_new_tokens must be >= 0", []),
    ("generate", ["ckpt={ckpt}", "prompt=@{tmp}/empty.txt"], "is empty; write a prompt into it", ["empty.txt"]),
    ("generate", ["ckpt={ckpt}", "prompt=@{tmp}/latin1.txt"], "is not UTF-8 (byte 3); convert it", ["latin1.txt"]),
    ("generate", ["ckpt={ckpt}", "prompt=@{tmp}/nothing.txt"], "does not exist; pass prompt=@PATH", []),
    ("generate", ["ckpt={ckpt}", "tmperature=1"], "the config has no key tmperature (did you mean temperature?)", []),
    # evaluate, inspect, export
    ("evaluate", ["ckpt={tmp}/truncated.ckpt"], "it may be truncated", ["truncated.ckpt"]),
    ("evaluate", ["ckpt={ckpt}", "data=shakespeare", "data.path=" + str(SHAKESPEARE), "paths.data_dir={tmp}/data"],
     "is tokenized differently from the checkpoint", ["ckpt/last.ckpt"]),
    ("describe", ["ckpt={tmp}/old.ckpt"], "was written by lmzoo 0.0.1", ["old.ckpt"]),
    ("export", ["ckpt={ckpt}", "out={tmp}/ckpt"], "already exists and is not an empty folder", ["ckpt/last.ckpt"]),
    # prepare
    ("prepare", ["data.path={tmp}/empty.txt", "paths.data_dir={tmp}/data"], "is empty; point data.path at a file", ["empty.txt"]),
    ("prepare", ["data.path={tmp}/latin1.txt", "paths.data_dir={tmp}/data"], "UTF-8", ["latin1.txt"]),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Bad and good files the cases point at, and a checkpoint trained for 10 steps."""
    tmp = tmp_path_factory.mktemp("bad_input")
    train(compose_train(tmp / "trained", "trainer.max_steps=10", "trainer.val_check_interval=10"))
    ckpt = tmp / "ckpt" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((tmp / "trained" / "run" / "checkpoints" / "last.ckpt").read_bytes())
    checkpoint = torch.load(ckpt, weights_only=False)
    (tmp / "truncated.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    checkpoint["lmzoo"]["version"] = "0.0.1"
    torch.save(checkpoint, tmp / "old.ckpt")
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes("Caf\u00e9 au lait".encode("latin-1"))
    (tmp / "prompt.txt").write_text("To be")
    return tmp


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("entry, args, expected, unchanged", CASES, ids=[f"{c[0]}:{c[1][-1] if c[1] else ''}" for c in CASES])
def test_bad_input_is_one_line_without_traceback(folder, monkeypatch, capsys, entry, args, expected, unchanged):
    before = {name: digest(folder / name) for name in unchanged}
    argv = [arg.format(tmp=folder, ckpt=folder / "ckpt" / "last.ckpt") for arg in args]
    monkeypatch.setattr(sys, "argv", [entry, *argv])
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(f"lmzoo.{entry}").main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and expected in ours[0], err
    assert {name: digest(folder / name) for name in unchanged} == before
