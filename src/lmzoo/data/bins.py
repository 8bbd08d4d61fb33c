"""Turn a text source into train.bin, val.bin and meta.json, streaming.

The bins are flat arrays of token ids (uint16 when the vocabulary fits, else uint32) that the
DataModule memory-maps. The text is read in blocks and cut into pieces that threads encode in
parallel; their ids are appended to temporary bins in order, so memory stays bounded whatever the
corpus size. Only a complete, valid result replaces the bins: meta.json goes first and comes back
last, describing the bins exactly, so a failed or killed prepare never leaves data that looks complete.
"""

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from lmzoo.data.config import DataConfig
from lmzoo.data.corpus import Corpus, pieces
from lmzoo.data.source import export_dataset, resolve_files, resolve_source, sha256_of_files
from lmzoo.data.tokenizer import Tokenizer, fit_tokenizer
from lmzoo.errors import UserError
from lmzoo.files import atomic_write, write_atomically

FORMAT_VERSION = 2
SPLITS = ("train", "val")
# Characters per piece handed to the tokenizer, and per group of pieces one thread encodes.
PIECE_CHARS = 1 << 20
GROUP_CHARS = 1 << 20


def token_dtype(vocab_size: int, name: str | None = None) -> np.dtype:
    """uint16 when the vocabulary fits, else uint32; or the dtype asked for, if it holds every id."""
    if name is None:
        return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)
    dtype = np.dtype(name)
    if dtype not in (np.uint16, np.uint32):
        raise UserError(f"data.dtype {name!r} is not supported; use uint16, uint32 or null (automatic)")
    if vocab_size > np.iinfo(dtype).max + 1:
        raise UserError(f"a vocabulary of {vocab_size:,} tokens does not fit {dtype.name}; "
                        "set data.dtype=uint32, or null to choose automatically")
    return dtype


def read_meta(data_dir: Path) -> dict | None:
    """meta.json if the bins beside it are complete, else None."""
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        bin_path = data_dir / f"{split}.bin"
        if not bin_path.is_file() or bin_path.stat().st_size != meta["splits"][split]["tokens"] * itemsize:
            return None
    return meta


def fingerprint(source_sha256: str, tokenizer_config: dict, train_fraction: float, document_separator,
                dtype: str | None) -> dict:
    """What the bins depend on: when any of it changes, prepare rebuilds them."""
    return {
        "format_version": FORMAT_VERSION,
        "source_sha256": source_sha256,
        "tokenizer_config": tokenizer_config,
        "train_fraction": train_fraction,
        "document_separator": document_separator,
        "dtype": dtype,
    }


def prepare(config: DataConfig, progress: bool = True) -> dict:
    """Build the bins in `config.data_dir` unless bins for the same inputs are already there; return meta.

    A validation source (`val_path`, or the dataset's `val_split`) replaces the split by `train_fraction`.
    Both splits must hold more than `block_size` + 1 tokens, or the existing bins stay as they are.
    """
    c = config
    sources = source_files(c.path, c.url, c.sha256, c.val_path, c.dataset, c.document_separator, c.cache_dir)
    checksum = "+".join(sha256_of_files(files) for files in sources.values())
    wanted = fingerprint(checksum, dict(c.tokenizer), c.train_fraction, c.document_separator, c.dtype)
    meta = read_meta(c.data_dir)
    if meta is not None and meta["fingerprint"] == wanted:
        check_block_size(meta["splits"], c.block_size)
        return meta

    spans = split_spans(sources, c.train_fraction, c.document_separator)
    tok = fit_tokenizer(
        dict(c.tokenizer),
        lambda: (text for corpus, start, stop in spans.values() for text in corpus.texts(start, stop)),
        lambda: (text for text, _ in pieces(spans["train"][0].texts(*spans["train"][1:]), c.document_separator,
                                            PIECE_CHARS)),
    )
    token_type = token_dtype(tok.vocab_size, c.dtype)
    fix = "free disk space or choose a writable data folder with paths.data_dir=DIR"
    # Both bins are published together, once both are complete and long enough; meta.json goes first.
    with atomic_write(c.data_dir / "train.bin", fix) as train, atomic_write(c.data_dir / "val.bin", fix) as val:
        splits = {
            split: encode_split(*spans[split], tok, file, token_type, c.prepare_workers, progress)
            for split, file in (("train", train), ("val", val))
        }
        check_block_size(splits, c.block_size)
        (c.data_dir / "meta.json").unlink(missing_ok=True)
    if tok.spec["kind"] == "bpe":
        write_atomically(c.data_dir / "tokenizer.json", tok.json.encode("utf-8"), fix)
    meta = {
        "fingerprint": wanted,
        "source": ", ".join(str(path) for files in sources.values() for path in files),
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": token_type.name,
        "splits": splits,
    }
    write_atomically(c.data_dir / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8"), fix)
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


def split_spans(sources: dict[str, list[Path]], train_fraction: float,
                separator: str | None) -> dict[str, tuple[Corpus, int, int]]:
    """Each split as (corpus, start byte, stop byte): the two sources, or one cut at a document boundary."""
    corpora = {split: Corpus(files, separator) for split, files in sources.items()}
    for split, corpus in corpora.items():
        if not any(text.strip() for text in corpus.texts(0, corpus.size)):
            names = ", ".join(map(str, corpus.files))
            raise UserError(f"{names} is empty; point data.{'val_path' if split == 'val' else 'path'} "
                            "at a file with text in it")
    if "val" in corpora:
        return {split: (corpus, 0, corpus.size) for split, corpus in corpora.items()}
    corpus = corpora["train"]
    split_at = corpus.split_offset(train_fraction)
    return {"train": (corpus, 0, split_at), "val": (corpus, split_at, corpus.size)}


def encode_split(corpus: Corpus, start: int, stop: int, tok: Tokenizer, file: BinaryIO, dtype: np.dtype,
                 workers: int | None, progress: bool) -> dict:
    """Tokenize bytes [start, stop) of the corpus into `file`; their token and byte counts."""
    # Documents are split out and followed by end-of-text only for tokenizers that have it.
    separator = corpus.separator if tok.eot_id is not None else None
    name = Path(file.name).name.removeprefix(".").split(".")[0]
    with tqdm(total=stop - start, desc=f"{Path(file.name).parent.name} {name}", unit="B", unit_scale=True,
              disable=not progress) as bar:
        texts = pieces(corpus.texts(start, stop, bar), separator, PIECE_CHARS)
        tokens = write_tokens(file, tok, texts, dtype, workers or min(8, os.cpu_count() or 1))
    return {"tokens": tokens, "bytes": stop - start}


def check_block_size(splits: dict, block_size: int) -> None:
    for split, info in splits.items():
        if info["tokens"] <= block_size + 1:
            raise UserError(
                f"block_size {block_size} is larger than the {split} split ({info['tokens']} tokens); "
                "lower block_size or use a larger corpus"
            )


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
