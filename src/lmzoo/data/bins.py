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

import numpy as np
from tqdm import tqdm

from lmzoo.data.corpus import Corpus, pieces
from lmzoo.data.source import export_dataset, resolve_files, resolve_source, sha256_of_files
from lmzoo.errors import UserError
from lmzoo.tokenizers import Tokenizer, fit_tokenizer

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


def prepare(
    data_dir: str | os.PathLike,
    tokenizer: dict,
    path: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    val_path: str | None = None,
    dataset: dict | None = None,
    train_fraction: float = 0.9,
    document_separator: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    dtype: str | None = None,
    block_size: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Build the bins in `data_dir` unless bins for the same inputs are already there; return meta.

    `dataset` names a Hugging Face dataset ({name, config, split, val_split, text_column}) used when
    there is no path or url. A validation source (`val_path`, or the dataset's `val_split`) replaces
    the split by `train_fraction`. Both splits must hold more than `block_size` + 1 tokens, or the
    existing bins stay as they are.
    """
    data_dir = Path(data_dir)
    if not 0.0 < train_fraction < 1.0:
        raise UserError(f"data.train_fraction must lie strictly between 0 and 1, got {train_fraction}")
    cache_dir = Path(cache_dir) if cache_dir else data_dir.parent / "downloads"
    sources = source_files(path, url, sha256, val_path, dataset, document_separator, cache_dir)
    checksum = "+".join(sha256_of_files(files) for files in sources.values())
    wanted = fingerprint(checksum, dict(tokenizer), train_fraction, document_separator, dtype)
    meta = read_meta(data_dir)
    if meta is not None and meta["fingerprint"] == wanted:
        check_block_size(meta["splits"], block_size)
        return meta

    spans = split_spans(sources, train_fraction, document_separator)
    tok = fit_tokenizer(
        dict(tokenizer),
        lambda: (text for corpus, start, stop in spans.values() for text in corpus.texts(start, stop)),
        lambda: (text for text, _ in pieces(spans["train"][0].texts(*spans["train"][1:]), document_separator,
                                            PIECE_CHARS)),
    )
    token_type = token_dtype(tok.vocab_size, dtype)
    data_dir.mkdir(parents=True, exist_ok=True)
    staged = {split: data_dir / f"{split}.bin.tmp" for split in SPLITS}
    try:
        splits = {
            split: encode_split(*spans[split], tok, staged[split], token_type, workers, progress)
            for split in SPLITS
        }
        check_block_size(splits, block_size)
        (data_dir / "meta.json").unlink(missing_ok=True)
        for split, temporary in staged.items():
            publish(temporary, data_dir / f"{split}.bin")
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
    if tok.spec["kind"] == "bpe":
        write_atomically(data_dir / "tokenizer.json", tok.json.encode("utf-8"))
    meta = {
        "fingerprint": wanted,
        "source": ", ".join(str(path) for files in sources.values() for path in files),
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": token_type.name,
        "splits": splits,
    }
    write_atomically(data_dir / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8"))
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


def encode_split(corpus: Corpus, start: int, stop: int, tok: Tokenizer, path: Path, dtype: np.dtype,
                 workers: int | None, progress: bool) -> dict:
    """Tokenize bytes [start, stop) of the corpus into `path`; their token and byte counts."""
    # Documents are split out and followed by end-of-text only for tokenizers that have it.
    separator = corpus.separator if tok.eot_id is not None else None
    with tqdm(total=stop - start, desc=f"{path.parent.name} {path.name.split('.')[0]}", unit="B",
              unit_scale=True, disable=not progress) as bar:
        texts = pieces(corpus.texts(start, stop, bar), separator, PIECE_CHARS)
        tokens = write_tokens(path, tok, texts, dtype, workers or min(8, os.cpu_count() or 1))
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


def write_tokens(path: Path, tok: Tokenizer, texts, dtype: np.dtype, workers: int) -> int:
    """Encode pieces on `workers` threads, appending their ids to `path` in order; return the count."""
    count = 0
    with open(path, "wb") as file, ThreadPoolExecutor(workers) as pool:
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
        file.flush()
        os.fsync(file.fileno())
    return count


def publish(temporary: Path, path: Path) -> None:
    os.replace(temporary, path)


def write_atomically(path: Path, payload: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
