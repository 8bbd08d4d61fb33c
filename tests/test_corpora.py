"""Data at scale: named corpora, any text, BPE, streaming preparation, bits per byte, bad input."""

import json
import math
import time

import numpy as np
import pytest
from hydra.utils import instantiate

from helpers import SHAKESPEARE, SHARED, compose_train, prepare_at, run

from lmzoo.data import BPETokenizer, CharTokenizer, TiktokenTokenizer, bins, corpus, read_meta, tokenizer_from_spec
from lmzoo.data.config import tokenizer_folder
from lmzoo.data.source import check_hub_reachable
from lmzoo.errors import UserError
from lmzoo.inference.sampling import TextStream
from lmzoo.training.datamodule import TokenDataModule
from lmzoo.training.run import build, train

HONGLOUMENG = SHARED / "data" / "hongloumeng.txt"
TINYSTORIES = SHARED / "data" / "tinystories-valid.txt"


def all_tokens(data_dir, meta, splits=("train", "val", "test")) -> list[int]:
    return [int(i) for split in splits for i in np.fromfile(data_dir / f"{split}.bin", dtype=meta.dtype)]


def one_shot(tok, text: str, separator: str | None) -> list[int]:
    """The whole text encoded at once: the reference the streaming writer must equal."""
    if not separator or tok.eot_id is None:
        return tok.encode_batch([text])[0]
    ids = []
    for document in text.split(separator):
        if document.strip():
            ids += tok.encode_batch([document])[0] + [tok.eot_id]
    return ids


@pytest.mark.parametrize("source, chars, tokenizer, separator", [
    (SHAKESPEARE, 150_000, {"kind": "tiktoken", "name": "gpt2"}, None),
    (HONGLOUMENG, 60_000, {"kind": "tiktoken", "name": "cl100k_base"}, None),
    (HONGLOUMENG, 60_000, {"kind": "tiktoken", "name": "gpt2"}, "\n\n"),
    (TINYSTORIES, 150_000, {"kind": "tiktoken", "name": "gpt2"}, "\n\n"),
    (TINYSTORIES, 150_000, {"kind": "bpe", "vocab_size": 400}, None),
    (HONGLOUMENG, 60_000, {"kind": "char"}, "\n\n"),
])
def test_streaming_bins_equal_a_one_shot_encode(tmp_path, monkeypatch, source, chars, tokenizer, separator):
    # Tiny blocks, pieces and groups: many cuts, characters split across blocks, several threads.
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 4093)
    monkeypatch.setattr(bins, "PIECE_CHARS", 3000)
    monkeypatch.setattr(bins, "GROUP_CHARS", 7000)
    text = source.read_text(encoding="utf-8")[:chars]
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    meta = prepare_at(tmp_path / "bins", tokenizer, path=str(path), document_separator=separator, prepare_workers=2)
    tok = tokenizer_from_spec(meta.tokenizer)
    encoded = text.encode("utf-8")
    split_at = len(encoded[: meta.splits["train"].bytes].decode("utf-8"))
    test_at = len(encoded[: meta.splits["train"].bytes + meta.splits["val"].bytes].decode("utf-8"))
    expected = [token for start, stop in ((0, split_at), (split_at, test_at), (test_at, len(text)))
                for token in one_shot(tok, text[start:stop], separator)]
    assert all_tokens(tmp_path / "bins" / tokenizer_folder(tokenizer), meta) == expected
    assert meta.splits["train"].tokens == len(one_shot(tok, text[:split_at], separator))


@pytest.mark.parametrize("tokenizer", ["char", "cl100k_base"])
def test_hongloumeng_round_trips_in_both_tokenizers(tmp_path, tokenizer):
    cfg = compose_train(tmp_path, "data=hongloumeng", f"data.path={HONGLOUMENG}", f"tokenizer={tokenizer}")
    datamodule = TokenDataModule(instantiate(cfg.data, _convert_="all"))
    datamodule.prepare_data()
    text = HONGLOUMENG.read_text(encoding="utf-8")
    tok = tokenizer_from_spec(datamodule.meta.tokenizer)
    assert tok.decode(all_tokens(datamodule.config.data_dir, datamodule.meta)) == text
    splits = datamodule.meta.splits
    assert splits["val"].bytes + splits["test"].bytes == len(text.encode("utf-8")) - splits["train"].bytes
    assert datamodule.meta.dtype == ("uint16" if tokenizer == "char" else "uint32")


def test_tinystories_from_the_local_slice(tmp_path):
    config = compose_train(tmp_path, "data=tinystories", f"data.path={TINYSTORIES}").data
    datamodule = TokenDataModule(instantiate(config, _convert_="all"))
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.meta.tokenizer == {"kind": "tiktoken", "name": "gpt2"}
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (4, 32) and int(x.max()) < 50257
    # The slice has no <|endoftext|> markers: one document, closed by end-of-text in each split.
    train = np.fromfile(datamodule.config.data_dir / "train.bin", dtype=np.uint16)
    assert train[-1] == 50256 and (train == 50256).sum() == 1
    assert TiktokenTokenizer("gpt2").decode(train[:-1].tolist()).startswith("Spot. Spot saw the shiny car")


def test_bpe_is_trained_on_the_training_split_and_round_trips(tmp_path):
    text = SHAKESPEARE.read_text()[:200_000]
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    meta = prepare_at(tmp_path / "bins", {"kind": "bpe", "vocab_size": 512}, path=str(path))
    tok = tokenizer_from_spec(meta.tokenizer)
    assert isinstance(tok, BPETokenizer) and meta.vocab_size == tok.vocab_size == 512
    assert tok.decode(all_tokens(tmp_path / "bins" / "bpe-512", meta)) == text
    for sample in ("ROMEO: O, she doth teach the torches!", "红楼梦 🙂 ünïcode", "<|endoftext|>"):
        assert tok.decode(tok.encode(sample)) == sample
    assert tok.encode("<|endoftext|>") == [tok.eot_id]
    # Saved beside the bins; fewer tokens than characters: merges were learnt.
    assert BPETokenizer((tmp_path / "bins" / "bpe-512" / "tokenizer.json").read_text()).encode("ROMEO:") == tok.encode("ROMEO:")
    assert meta.splits["train"].tokens < 0.5 * meta.splits["train"].bytes
    # Trained on the training split only: the same corpus with a different split learns other merges.
    other = prepare_at(tmp_path / "other", {"kind": "bpe", "vocab_size": 512}, path=str(path), train_fraction=0.5)
    assert other.tokenizer != meta.tokenizer


def test_validation_split_starts_at_a_document_boundary(tmp_path):
    documents = [f"story {i}: " + "once upon a time " * (i % 7 + 1) for i in range(100)]
    path = tmp_path / "stories.txt"
    path.write_text("<|endoftext|>".join(documents))
    meta = prepare_at(tmp_path / "bins", {"kind": "tiktoken", "name": "gpt2"}, path=str(path),
                   document_separator="<|endoftext|>")
    tok = TiktokenTokenizer("gpt2")
    # The held-out documents: validation's, then test's.
    val = all_tokens(tmp_path / "bins" / "gpt2", meta, ("val", "test"))
    val_documents = tok.decode(val).split("<|endoftext|>")
    assert val_documents[-1] == "" and set(val_documents[:-1]) <= set(documents)
    assert val_documents[0] == documents[100 - len(val_documents) + 1]
    assert meta.splits["val"].bytes + meta.splits["test"].bytes == len("<|endoftext|>".join(val_documents[:-1]).encode())


def test_folder_and_glob_sources_read_every_text_file(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    for name, body in [("b.txt", "second book " * 50), ("a.txt", "first book " * 50), ("notes.md", "skipped")]:
        (folder / name).write_text(body)
    from_folder = prepare_at(tmp_path / "f", {"kind": "char"}, path=str(folder))
    from_glob = prepare_at(tmp_path / "g", {"kind": "char"}, path=str(folder / "*.txt"))
    tok = CharTokenizer(from_folder.tokenizer["chars"])
    in_folder, in_glob = all_tokens(tmp_path / "f" / "char", from_folder), all_tokens(tmp_path / "g" / "char", from_glob)
    assert tok.decode(in_folder) == "first book " * 50 + "\n" + "second book " * 50
    assert in_glob == in_folder


def test_a_local_hugging_face_dataset_with_a_text_column_and_a_validation_split(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    rows = {split: [{"id": i, "content": f"{split} row {i} says hello"} for i in range(count)]
            for split, count in (("train", 200), ("validation", 20))}
    for split, split_rows in rows.items():
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(row) for row in split_rows))
    dataset = {"name": str(folder), "config": None, "split": "train", "val_split": "validation",
               "text_column": "content"}
    meta = prepare_at(tmp_path / "bins", {"kind": "tiktoken", "name": "gpt2"}, dataset=dataset,
                   document_separator="<|endoftext|>")
    tok = TiktokenTokenizer("gpt2")
    # The validation split holds validation and test, cut at a row.
    for splits, name in ((("train",), "train"), (("val", "test"), "validation")):
        decoded = tok.decode(all_tokens(tmp_path / "bins" / "gpt2", meta, splits))
        assert decoded == "".join(row["content"] + "<|endoftext|>" for row in rows[name])
    assert meta.splits["train"].tokens > 0


def test_hugging_face_dataset_offline_fails_fast_naming_data_path(tmp_path):
    started = time.perf_counter()
    dataset = {"name": "roneneldan/TinyStories", "config": None, "split": "train", "text_column": "text"}
    with pytest.raises(UserError, match="offline, set data.path to local text files"):
        prepare_at(tmp_path / "bins", {"kind": "tiktoken", "name": "gpt2"}, dataset=dataset)
    # Without HF_DATASETS_OFFLINE, an unreachable Hub is found before datasets starts retrying.
    with pytest.raises(UserError, match="could not reach hub.invalid .*; offline, set data.path to local text files"):
        check_hub_reachable("roneneldan/TinyStories", "https://hub.invalid")
    assert time.perf_counter() - started < 20


def bad_input(tmp_path, case):
    """prepare_at() arguments for each bad-input case, with the message it must give."""
    text_file = tmp_path / "good.txt"
    if case == "empty file":
        (tmp_path / "empty.txt").write_text("")
        return {"path": str(tmp_path / "empty.txt")}, "is empty; point data.path at a file with text in it"
    if case == "not UTF-8":
        # The bad byte comes late, after many blocks have been tokenized and written.
        (tmp_path / "latin1.txt").write_bytes(TEXT.encode() * 40 + "café".encode("latin-1"))
        return ({"path": str(tmp_path / "latin1.txt"), "tokenizer": {"kind": "tiktoken", "name": "gpt2"}},
                rf"is not UTF-8 text \(bad byte at offset {len(TEXT) * 40 + 3}\)")
    if case == "binary":
        (tmp_path / "data.bin").write_bytes(bytes(range(100)) * 10)
        return {"path": str(tmp_path / "data.bin")}, r"looks binary \(NUL byte at offset 0\)"
    if case == "glob matching nothing":
        return {"path": str(tmp_path / "nothing" / "*.txt")}, "matches no file; check the pattern"
    if case == "dataset without the text column":
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "train.jsonl").write_text('{"body": "some text"}\n' * 10)
        dataset = {"name": str(tmp_path / "ds"), "config": None, "split": "train", "text_column": "text"}
        return {"dataset": dataset}, r"has no column 'text'; set data.dataset.text_column to one of \['body'\]"
    if case == "vocabulary too large for the dtype":
        return ({"path": str(text_file), "tokenizer": {"kind": "tiktoken", "name": "cl100k_base"}, "dtype": "uint16"},
                "a vocabulary of 100,277 tokens does not fit uint16; set data.dtype=uint32")
    if case == "corpus too small for block_size":
        return {"path": str(text_file), "block_size": 1000}, "block_size 1000 is larger than the val split"
    raise ValueError(case)


TEXT = "Before we proceed any further, hear me speak.\n" * 100


@pytest.mark.parametrize("case", ["empty file", "not UTF-8", "binary", "glob matching nothing",
                                  "dataset without the text column", "vocabulary too large for the dtype",
                                  "corpus too small for block_size"])
def test_bad_input_gets_one_line_and_leaves_the_bins_untouched(tmp_path, monkeypatch, case):
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 1000)
    monkeypatch.setattr(bins, "PIECE_CHARS", 500)
    (tmp_path / "good.txt").write_text(TEXT)
    prepare_at(tmp_path / "bins", {"kind": "char"}, path=str(tmp_path / "good.txt"))
    arguments, message = bad_input(tmp_path, case)
    arguments = {"tokenizer": {"kind": "char"}, **arguments}
    # The bins of the tokenizer the bad input asks for, made good first.
    data_dir = tmp_path / "bins" / tokenizer_folder(arguments["tokenizer"])
    prepare_at(tmp_path / "bins", arguments["tokenizer"], path=str(tmp_path / "good.txt"))
    before = {p.name: p.read_bytes() for p in data_dir.glob("[!.]*")}
    with pytest.raises(UserError, match=message) as error:
        prepare_at(tmp_path / "bins", **arguments)
    assert "\n" not in str(error.value)
    assert {p.name: p.read_bytes() for p in data_dir.glob("[!.]*")} == before
    assert read_meta(data_dir) is not None


def test_val_bpb_equals_the_hand_computed_value(tmp_path):
    text = "naïve café, déjà vu; Æsop’s fables. " * 60
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    cfg = compose_train(tmp_path, f"data.path={path}", "block_size=16")
    datamodule, lit, trainer = build(cfg)
    val_text = text.encode()[int(len(text.encode()) * 0.9):].decode("utf-8", errors="ignore")
    tokens_per_byte = len(val_text) / len(val_text.encode("utf-8"))
    metrics = trainer.validate(lit, datamodule=datamodule, verbose=False)[0]
    assert metrics["val/bpb"] == pytest.approx(metrics["val/loss"] / math.log(2) * tokens_per_byte, rel=1e-5)
    assert tokens_per_byte < 0.95


def test_streamed_cl100k_chinese_never_prints_broken_characters():
    tok = TiktokenTokenizer("cl100k_base")
    text = HONGLOUMENG.read_text(encoding="utf-8")[:3000]
    ids = tok.encode(text)
    # The test means something only if some tokens end inside a character.
    assert any(tok.decode([i]).endswith("\ufffd") for i in ids)
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)


def test_design_card_command_trains_on_tinystories_and_generate_needs_no_data(tmp_path):
    import shutil

    cfg = compose_train(tmp_path, "model=gpt_rope", "data=tinystories", f"data.path={TINYSTORIES}", "tokenizer=bpe",
                        "data.tokenizer.vocab_size=300")
    best = train(cfg)["best_checkpoint"]
    assert json.loads((tmp_path / "data" / "tinystories" / "bpe-300" / "meta.json").read_text())["vocab_size"] == 300
    assert (tmp_path / "data" / "tinystories" / "bpe-300" / "tokenizer.json").is_file()
    shutil.rmtree(tmp_path / "data")
    out = run("lmzoo.generate", f"ckpt={best}", "prompt=Once upon a time", "max_new_tokens=30", cwd=tmp_path).stdout
    assert out.startswith("Once upon a time") and len(out) > len("Once upon a time") + 10


def test_a_separate_validation_file(tmp_path):
    (tmp_path / "train.txt").write_text("<|endoftext|>".join(f"train story {i}" for i in range(50)))
    (tmp_path / "valid.txt").write_text("<|endoftext|>".join(f"valid story {i}" for i in range(10)))
    meta = prepare_at(tmp_path / "bins", {"kind": "tiktoken", "name": "gpt2"}, path=str(tmp_path / "train.txt"),
                   val_path=str(tmp_path / "valid.txt"), document_separator="<|endoftext|>")
    tok = TiktokenTokenizer("gpt2")
    val = tok.decode(all_tokens(tmp_path / "bins" / "gpt2", meta, ("val",)))
    test = tok.decode(all_tokens(tmp_path / "bins" / "gpt2", meta, ("test",)))
    assert val + test == "".join(f"valid story {i}<|endoftext|>" for i in range(10))
    assert test.startswith("valid story") and val.endswith("<|endoftext|>")
    assert meta.splits["val"].bytes + meta.splits["test"].bytes == (tmp_path / "valid.txt").stat().st_size


def test_char_ids_follow_the_vocabulary_order():
    # Lookups are vectorised over a sorted copy; ids must still be positions in the stored vocabulary.
    tok = CharTokenizer("cab\n")
    assert tok.encode("abc\nba") == [1, 2, 0, 3, 2, 1] and tok.decode(tok.encode("abc\nba")) == "abc\nba"
