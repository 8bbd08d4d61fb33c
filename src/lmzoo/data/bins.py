"""Turn a text source into train.bin, val.bin, test.bin and meta.json, streaming.

The bins are flat arrays of token ids (uint16 when the vocabulary fits, else uint32) that the
DataModule memory-maps. The text is read in blocks and cut into pieces that threads encode in
parallel; their ids are appended to temporary bins in order, so memory stays bounded whatever the
corpus size. Only a complete, valid result replaces the bins: meta.json goes first and comes back
last, describing the bins exactly, so a failed or killed prepare never leaves data that looks complete.
"""

import contextlib
import json
import os
from collections import deque
from dataclasses import asdict, dataclass, replace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from lmzoo.data.config import DataConfig
from lmzoo.data.corpus import Corpus, pieces
from lmzoo.data.source import export_dataset, resolve_files, resolve_source, sha256_of_files
from lmzoo.data.tokenizer import Tokenizer, fit_tokenizer
from lmzoo.errors import Interrupted, UserError
from lmzoo.files import atomic_write, hold_folder, sha256_of, write_atomically

# 3: a test split beside train and val.
FORMAT_VERSION = 3
SPLITS = ("train", "val", "test")
META = "meta.json"
# Characters per piece handed to the tokenizer, and per group of pieces one thread encodes.
PIECE_CHARS = 1 << 20
GROUP_CHARS = 1 << 20


def token_dtype(vocab_size: int, name: str | None = None) -> np.dtype:
    """uint16 when the vocabulary fits, else uint32; or the dtype asked for (uint16 or uint32), if it holds every id."""
    if name is None:
        return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)
    dtype = np.dtype(name)
    if vocab_size > np.iinfo(dtype).max + 1:
        raise UserError(f"a vocabulary of {vocab_size:,} tokens does not fit {dtype.name}; "
                        "set data.dtype=uint32, or null to choose automatically")
    return dtype


@dataclass(frozen=True)
class SplitSize:
    """A split's length in tokens, and in bytes of the text they encode; the bin's sha256 and modification time
    when prepared (None in bins of older releases), which tell whether it changed since (check_unchanged)."""

    tokens: int
    bytes: int
    sha256: str | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True, kw_only=True)
class BinsMeta:
    """meta.json: what the bins beside it hold and what made them. Written by prepare once the bins are complete,
    read by whatever opens the bins."""

    # What the bins depend on (see fingerprint): when any of it changes, prepare rebuilds them.
    fingerprint: dict
    # The source files, joined by ", ".
    source: str
    tokenizer: dict
    vocab_size: int
    eot_id: int | None
    # uint16 or uint32.
    dtype: str
    splits: dict[str, SplitSize]

    @property
    def val_tokens_per_byte(self) -> float:
        """Tokens per UTF-8 byte of the validation text: turns val/loss into bits per byte."""
        return self.tokens_per_byte("val")

    def tokens_per_byte(self, split: str) -> float:
        size = self.splits[split]
        return size.tokens / size.bytes

    def write(self, data_dir: Path, fix: str) -> None:
        write_atomically(data_dir / META, json.dumps(asdict(self), indent=2, ensure_ascii=False).encode("utf-8"), fix)

    @classmethod
    def read(cls, data_dir: Path) -> "BinsMeta | None":
        """meta.json if it is one and the bins beside it are complete, else None."""
        try:
            record = json.loads((data_dir / META).read_text())
            meta = cls(**{**record, "splits": {split: SplitSize(**record["splits"][split]) for split in SPLITS}})
            itemsize = np.dtype(meta.dtype).itemsize
        except (OSError, ValueError, KeyError, TypeError):
            return None
        for split in SPLITS:
            bin_path = data_dir / f"{split}.bin"
            if not bin_path.is_file() or bin_path.stat().st_size != meta.splits[split].tokens * itemsize:
                return None
        return meta


def read_meta(data_dir: Path) -> BinsMeta | None:
    """meta.json if the bins beside it are complete, else None."""
    return BinsMeta.read(data_dir)


def fingerprint(source_sha256: str, tokenizer_config: dict, train_fraction: float, test_fraction: float,
                document_separator, dtype: str | None) -> dict:
    """What the bins depend on: when any of it changes, prepare rebuilds them."""
    return {
        "format_version": FORMAT_VERSION,
        "source_sha256": source_sha256,
        "tokenizer_config": tokenizer_config,
        "train_fraction": train_fraction,
        "test_fraction": test_fraction,
        "document_separator": document_separator,
        "dtype": dtype,
    }


# What a split shorter than block_size + 2 tokens asks of a command that can change its block_size.
TOO_SHORT = "lower block_size or use a larger corpus"


def prepare(config: DataConfig, progress: bool = True, too_short: str = TOO_SHORT) -> BinsMeta:
    """Build the bins in `config.data_dir` unless bins for the same inputs are already there; return meta.

    A validation source (`val_path`, or the dataset's `val_split`) replaces the split by `train_fraction`; the
    test split is the last `test_fraction` of the held-out text (what follows `train_fraction`, or that source).
    Every split must hold more than `block_size` + 1 tokens, or the existing bins stay as they are, and the error
    names `too_short`, the caller's fix. One process at a time prepares a data folder: another one waits, then
    finds the bins ready.
    """
    fix = "free disk space or choose a writable data folder with paths.data_dir=DIR"
    with hold_folder(config.data_dir, "preparing", wait=True, fix="choose a writable data folder with paths.data_dir=DIR"):
        try:
            return prepare_held(config, fix, progress, too_short)
        except KeyboardInterrupt:
            raise Interrupted(f"stopped by Ctrl-C while preparing {config.data_dir}; its bins are as they were "
                              "before (none were replaced); run the command again to prepare them") from None


def prepare_held(config: DataConfig, fix: str, progress: bool, too_short: str) -> BinsMeta:
    c = config
    sources = source_files(c.path, c.url, c.sha256, c.val_path, c.dataset, c.document_separator, c.cache_dir)
    checksum = "+".join(sha256_of_files(files) for files in sources.values())
    wanted = fingerprint(checksum, dict(c.tokenizer), c.train_fraction, c.test_fraction, c.document_separator, c.dtype)
    meta = read_meta(c.data_dir)
    if meta is not None and meta.fingerprint == wanted:
        check_block_size(meta.splits, c.block_size, too_short)
        check_token_ids(c.data_dir, meta)
        check_unchanged(c.data_dir, meta)
        return meta

    spans = split_spans(sources, c.train_fraction, c.test_fraction, c.document_separator)
    tok = fit_tokenizer(
        dict(c.tokenizer),
        lambda: (text for corpus, start, stop in spans.values() for text in corpus.texts(start, stop)),
        lambda: (text for text, _ in pieces(spans["train"][0].texts(*spans["train"][1:]), c.document_separator,
                                            PIECE_CHARS)),
    )
    token_type = token_dtype(tok.vocab_size, c.dtype)
    # The bins are published together, once all are complete and long enough; meta.json goes first.
    with contextlib.ExitStack() as bins:
        files = {split: bins.enter_context(atomic_write(c.data_dir / f"{split}.bin", fix)) for split in SPLITS}
        splits = {split: encode_split(*spans[split], tok, files[split], token_type, c.prepare_workers, progress)
                  for split in SPLITS}
        check_block_size(splits, c.block_size, too_short)
        (c.data_dir / META).unlink(missing_ok=True)
    # With the size, what tells whether a bin may have changed since, without reading it (check_unchanged).
    splits = {split: replace(size, mtime_ns=(c.data_dir / f"{split}.bin").stat().st_mtime_ns)
              for split, size in splits.items()}
    if tok.spec["kind"] == "bpe":
        write_atomically(c.data_dir / "tokenizer.json", tok.json.encode("utf-8"), fix)
    meta = BinsMeta(fingerprint=wanted, source=", ".join(str(path) for files in sources.values() for path in files),
                    tokenizer=tok.spec, vocab_size=tok.vocab_size, eot_id=tok.eot_id, dtype=token_type.name,
                    splits=splits)
    meta.write(c.data_dir, fix)
    return meta


def source_files(path, url, sha256, val_path, dataset: dict | None, separator: str | None,
                 cache_dir: Path) -> dict[str, list[Path]]:
    """The files of the corpus ("train"), and of a separate validation source ("val") if there is one."""
    if not path and not url and dataset and dataset.get("name"):
        export = {"name": dataset["name"], "config": dataset.get("config"),
                  "text_column": dataset.get("text_column") or "text"}
        sources = {"train": export_dataset(**export, split=dataset.get("split", "train"), separator=separator,
                                           cache_dir=cache_dir)}
        if dataset.get("val_split"):
            sources["val"] = export_dataset(**export, split=dataset["val_split"], separator=separator,
                                            cache_dir=cache_dir)
        return sources
    sources = {"train": resolve_source(path, url, sha256, cache_dir)}
    if val_path:
        sources["val"] = resolve_files(val_path, "data.val_path")
    return sources


def split_spans(sources: dict[str, list[Path]], train_fraction: float, test_fraction: float,
                separator: str | None) -> dict[str, tuple[Corpus, int, int]]:
    """Each split as (corpus, start byte, stop byte), cut at document boundaries: train, then the held-out text
    (the validation source, or what follows train_fraction) as validation and, its last test_fraction, test."""
    corpora = {split: Corpus(files, separator) for split, files in sources.items()}
    for split, corpus in corpora.items():
        if not any(text.strip() for text in corpus.texts(0, corpus.size)):
            names = ", ".join(map(str, corpus.files))
            what = "holds only whitespace" if corpus.size else "is empty"
            raise UserError(f"{names} {what}; point data.{'val_path' if split == 'val' else 'path'} "
                            "at a file with text in it")
    train = corpora["train"]
    if "val" in corpora:
        train_span, (held_out, start) = (train, 0, train.size), (corpora["val"], 0)
    else:
        split_at = train.split_offset(train_fraction)
        train_span, (held_out, start) = (train, 0, split_at), (train, split_at)
    test_at = held_out.cut_at(start + int((held_out.size - start) * (1 - test_fraction)))
    return {"train": train_span, "val": (held_out, start, test_at), "test": (held_out, test_at, held_out.size)}


def encode_split(corpus: Corpus, start: int, stop: int, tok: Tokenizer, file: BinaryIO, dtype: np.dtype,
                 workers: int | None, progress: bool) -> SplitSize:
    """Tokenize bytes [start, stop) of the corpus into `file`; their token and byte counts."""
    # Documents are split out and followed by end-of-text only for tokenizers that have it.
    separator = corpus.separator if tok.eot_id is not None else None
    name = Path(file.name).name.removeprefix(".").split(".")[0]
    folder = Path(file.name).parent
    with tqdm(total=stop - start, desc=f"{folder.parent.name}/{folder.name} {name}", unit="B", unit_scale=True,
              disable=not progress) as bar:
        texts = pieces(corpus.texts(start, stop, bar), separator, PIECE_CHARS)
        tokens = write_tokens(file, tok, texts, dtype, workers or min(8, os.cpu_count() or 1))
    file.flush()
    return SplitSize(tokens, stop - start, sha256=sha256_of(Path(file.name)))


def check_token_ids(data_dir: Path, meta: BinsMeta) -> None:
    """Refuse bins holding an id outside the vocabulary (overwritten by something else than lmzoo): training
    on them would fail deep inside torch, or learn from garbage."""
    for split in SPLITS:
        tokens = np.memmap(data_dir / f"{split}.bin", dtype=meta.dtype, mode="r")
        # In blocks, so that a bin of gigabytes is never read into memory at once.
        largest = max((int(tokens[i : i + (1 << 24)].max()) for i in range(0, len(tokens), 1 << 24)), default=0)
        if largest >= meta.vocab_size:
            raise UserError(f"{data_dir / f'{split}.bin'} holds token id {largest}, outside the vocabulary of "
                            f"{meta.vocab_size} in its meta.json: the bins are damaged; delete {data_dir} "
                            "and run the command again to prepare them anew")


def check_unchanged(data_dir: Path, meta: BinsMeta) -> None:
    """Refuse bins changed in place since they were prepared (their ids may all lie in the vocabulary, and train
    a model on other text). Only a bin whose modification time is not the recorded one is read and hashed;
    bins of older releases record no digest."""
    for split in SPLITS:
        size, path = meta.splits[split], data_dir / f"{split}.bin"
        if size.sha256 is None or path.stat().st_mtime_ns == size.mtime_ns:
            continue
        if sha256_of(path) != size.sha256:
            raise UserError(f"{path} has changed since it was prepared (its sha256 is not the one in meta.json); "
                            f"delete {data_dir} and run the command again to prepare it anew")


def check_block_size(splits: dict[str, SplitSize], block_size: int, fix: str = TOO_SHORT) -> None:
    for split, size in splits.items():
        if size.tokens <= block_size + 1:
            raise UserError(f"block_size {block_size} is larger than the {split} split ({size.tokens} tokens); {fix}")


def encode_group(tok: Tokenizer, group: list[tuple[str, bool]], dtype: np.dtype) -> np.ndarray:
    """The ids of a group of pieces, end-of-text after each one that ends a document."""
    arrays = []
    for ids, (_, ends_document) in zip(tok.encode_batch([text for text, _ in group]), group):
        arrays.append(np.asarray(ids, dtype=dtype))
        if ends_document:
            arrays.append(np.array([tok.eot_id], dtype=dtype))
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)


def groups(texts, size: int):
    """Consecutive pieces gathered until they hold about `size` characters."""
    group, chars = [], 0
    for piece in texts:
        group.append(piece)
        chars += len(piece[0])
        if chars >= size:
            yield group
            group, chars = [], 0
    if group:
        yield group


def write_tokens(file: BinaryIO, tok: Tokenizer, texts, dtype: np.dtype, workers: int) -> int:
    """Encode pieces on `workers` threads, appending their ids to `file` in order; return the count."""
    count = 0
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()

        def write_oldest():
            nonlocal count
            ids = pending.popleft().result()
            file.write(ids.tobytes())
            count += len(ids)

        for group in groups(texts, GROUP_CHARS):
            pending.append(pool.submit(encode_group, tok, group, dtype))
            # A bounded queue: at most two groups per thread are in memory at once.
            if len(pending) >= 2 * workers:
                write_oldest()
        while pending:
            write_oldest()
    return count
