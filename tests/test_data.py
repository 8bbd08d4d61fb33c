import json
import os

import numpy as np
import pytest
import torch

from helpers import SHAKESPEARE, compose_train, prepare_at
from hydra.utils import instantiate

from lmzoo import files
from lmzoo.data import CharTokenizer, TiktokenTokenizer, prepare, read_meta
from lmzoo.data.windows import FixedWindows, RandomWindows
from lmzoo.errors import Interrupted, UserError
from lmzoo.training.datamodule import TokenDataModule

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def test_prepare_writes_bins_and_meta(tmp_path, corpus):
    meta = prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    assert meta.dtype == "uint16"
    assert meta.tokenizer == {"kind": "char", "chars": "".join(sorted(set(TEXT)))}
    train, val, test = (np.fromfile(tmp_path / "bins" / "char" / f"{split}.bin", dtype=np.uint16)
                        for split in ("train", "val", "test"))
    tokenizer = CharTokenizer(meta.tokenizer["chars"])
    # Three disjoint splits of the text, in order: train, then the held-out tenth as validation and test halves.
    assert "".join(tokenizer.decode(split.tolist()) for split in (train, val, test)) == TEXT
    assert len(train) == meta.splits["train"].tokens == int(len(TEXT) * 0.9)
    held_out = len(TEXT) - int(len(TEXT) * 0.9)
    assert meta.splits["val"].bytes == int(held_out * 0.5) and meta.splits["test"].bytes == held_out - int(held_out * 0.5)


def test_prepare_is_idempotent_and_rebuilds_on_new_inputs_in_a_folder_per_tokenizer(tmp_path, corpus):
    bins = tmp_path / "bins"
    prepare_at(bins, {"kind": "char"}, path=str(corpus))
    stamps = {p.name: p.stat().st_mtime_ns for p in (bins / "char").glob("[!.]*")}
    prepare_at(bins, {"kind": "char"}, path=str(corpus))
    assert {p.name: p.stat().st_mtime_ns for p in (bins / "char").glob("[!.]*")} == stamps

    meta = prepare_at(bins, {"kind": "tiktoken", "name": "gpt2"}, path=str(corpus))
    assert meta.tokenizer == {"kind": "tiktoken", "name": "gpt2"}
    # Each tokenizer of a data set has its own bins: a sweep over tokenizers never rebuilds another's.
    assert {p.name: p.stat().st_mtime_ns for p in (bins / "char").glob("[!.]*")} == stamps
    corpus.write_text(TEXT + "more text\n")
    meta = prepare_at(bins, {"kind": "tiktoken", "name": "gpt2"}, path=str(corpus))
    test = np.fromfile(bins / "gpt2" / "test.bin", dtype=np.uint16).tolist()
    assert TiktokenTokenizer("gpt2").decode(test).endswith("more text\n")


def test_cl100k_base_needs_uint32(tmp_path, corpus):
    meta = prepare_at(tmp_path / "bins", {"kind": "tiktoken", "name": "cl100k_base"}, path=str(corpus))
    assert meta.dtype == "uint32" and meta.vocab_size > 2**16
    ids = np.fromfile(tmp_path / "bins" / "cl100k_base" / "train.bin", dtype=np.uint32)
    assert ids.max() < meta.vocab_size
    assert TEXT.startswith(TiktokenTokenizer("cl100k_base").decode(ids.tolist()))


def test_tiktoken_works_offline_from_the_shared_cache():
    for name in ("gpt2", "cl100k_base"):
        tokenizer = TiktokenTokenizer(name)
        assert tokenizer.decode(tokenizer.encode("Hello, 世界!")) == "Hello, 世界!"
        assert tokenizer.encode("<|endoftext|>") == [tokenizer.eot_id]
    assert TiktokenTokenizer("gpt2").vocab_size == 50257


def test_interrupted_prepare_says_so_in_one_line_and_leaves_no_bins_that_look_complete(tmp_path, corpus, monkeypatch):
    bins = tmp_path / "bins" / "char"
    prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    real_replace = files.os.replace

    def killed_on_val(partial, path):
        if path.name == "val.bin":
            raise KeyboardInterrupt
        real_replace(partial, path)

    monkeypatch.setattr(files.os, "replace", killed_on_val)
    corpus.write_text(TEXT + "more text\n")
    with pytest.raises(Interrupted, match=f"stopped by Ctrl-C while preparing {bins}; its bins are as they were"):
        prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    assert read_meta(bins) is None
    assert sorted(p.name for p in bins.iterdir()) == [".lmzoo.lock", "test.bin", "train.bin", "val.bin"]
    monkeypatch.undo()
    assert prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus)).splits["val"].bytes > 0


def test_truncated_bin_is_not_accepted(tmp_path, corpus):
    bins = tmp_path / "bins" / "char"
    prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    with open(bins / "train.bin", "r+b") as file:
        file.truncate(10)
    assert read_meta(bins) is None
    meta = prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    assert meta.splits["train"].tokens * 2 == (bins / "train.bin").stat().st_size


def test_bins_holding_ids_outside_the_vocabulary_are_refused(tmp_path, corpus):
    bins = tmp_path / "bins" / "char"
    prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    with open(bins / "val.bin", "r+b") as file:
        file.write(np.array([40000], dtype=np.uint16).tobytes())
    with pytest.raises(UserError, match=f"{bins / 'val.bin'} holds token id 40000, outside the vocabulary of 27"):
        prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))


def test_bins_changed_in_place_within_the_vocabulary_are_refused_and_a_touched_one_is_not(tmp_path, corpus):
    bins = tmp_path / "bins" / "char"
    meta = prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    # Read again only when its modification time moved: a copy or a touch keeps the same bytes.
    os.utime(bins / "train.bin", ns=(0, meta.splits["train"].mtime_ns + 10**9))
    prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    with open(bins / "train.bin", "r+b") as file:
        first = np.frombuffer(file.read(2), dtype=np.uint16)[0]
        file.seek(0)
        file.write(np.array([(first + 1) % meta.vocab_size], dtype=np.uint16).tobytes())
    with pytest.raises(UserError, match=f"^{bins / 'train.bin'} has changed since it was prepared"):
        prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))


def test_url_source_is_downloaded_once_and_checksum_verified(tmp_path, corpus):
    from lmzoo.files import sha256_of

    url = corpus.as_uri()
    cache = tmp_path / "downloads"
    meta = prepare_at(tmp_path / "bins", {"kind": "char"}, url=url, sha256=sha256_of(corpus))
    assert (cache / "corpus.txt").read_text() == TEXT and meta.splits["train"].tokens > 0
    with pytest.raises(UserError, match="does not match the expected sha256"):
        prepare_at(tmp_path / "other", {"kind": "char"}, url=url, sha256="0" * 64)


def test_unreachable_url_names_data_path(tmp_path):
    with pytest.raises(UserError, match="set data.path to a local copy"):
        prepare_at(tmp_path / "bins", {"kind": "char"}, url="file:///nonexistent/input.txt")


def test_missing_data_file_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="does not exist; point data.path at a text file"):
        prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(tmp_path / "missing.txt"))


def test_training_windows_are_a_pure_function_of_the_batch_index(tmp_path, corpus):
    prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    path = tmp_path / "bins" / "char" / "train.bin"
    from_start = iter(RandomWindows(path, "uint16", 16, 4, seed=7, rank=0, world_size=1, start=0))
    batches = [next(from_start) for _ in range(6)]
    resumed = next(iter(RandomWindows(path, "uint16", 16, 4, seed=7, rank=0, world_size=1, start=5)))
    assert torch.equal(resumed[0], batches[5][0]) and torch.equal(resumed[1], batches[5][1])
    x, y = batches[0]
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_ranks_share_out_the_global_batch_of_a_single_process(tmp_path, corpus):
    prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    path = tmp_path / "bins" / "char" / "train.bin"
    single = next(iter(RandomWindows(path, "uint16", 16, 8, seed=7, rank=0, world_size=1, start=3)))
    shares = [next(iter(RandomWindows(path, "uint16", 16, 4, seed=7, rank=rank, world_size=2, start=3)))
              for rank in (0, 1)]
    assert not torch.equal(shares[0][0], shares[1][0])
    assert torch.equal(torch.cat([shares[0][0], shares[1][0]]), single[0])


def test_validation_windows_are_fixed(tmp_path, corpus):
    prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(corpus))
    first = list(FixedWindows(tmp_path / "bins" / "char" / "val.bin", "uint16", 16, 4, max_batches=3))
    second = list(FixedWindows(tmp_path / "bins" / "char" / "val.bin", "uint16", 16, 4, max_batches=3))
    assert len(first) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(first, second))


def test_block_size_larger_than_validation_split_is_refused(tmp_path):
    cfg = compose_train(tmp_path, "block_size=200000")
    with pytest.raises(UserError, match="block_size 200000 is larger than the val split"):
        prepare(instantiate(cfg.data, _convert_="all"), progress=False)


def test_datamodule_serves_batches_from_the_real_config(tmp_path):
    datamodule = TokenDataModule(instantiate(compose_train(tmp_path).data, _convert_="all"))
    datamodule.prepare_data()
    datamodule.setup("fit")
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (4, 32) and x.dtype == torch.int64
    assert datamodule.vocab_size == 65
    meta = tmp_path / "data" / "shakespeare_char" / "char" / "meta.json"
    assert json.loads(meta.read_text())["source"] == str(SHAKESPEARE)


def test_char_prompt_outside_vocabulary_names_the_characters():
    with pytest.raises(UserError, match="outside the char vocabulary: '€'"):
        CharTokenizer("abc\n").encode("ab€")
