"""Turn a text source into train.bin, val.bin and meta.json.

The bins are flat arrays of token ids (uint16 when the vocabulary fits, else uint32) that the
DataModule memory-maps. meta.json is written last and describes the bins exactly, so bins without
a matching meta.json are never used: a killed prepare cannot leave data that looks complete.
"""

import json
import os
from pathlib import Path

import numpy as np

from lmzoo.data.source import resolve_source, sha256_of
from lmzoo.errors import UserError
from lmzoo.tokenizers import Tokenizer, fit_tokenizer

FORMAT_VERSION = 1
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


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


def fingerprint(source_sha256: str, tokenizer_config: dict, train_fraction: float, document_separator) -> dict:
    """What the bins depend on: when any of it changes, prepare rebuilds them."""
    return {
        "format_version": FORMAT_VERSION,
        "source_sha256": source_sha256,
        "tokenizer_config": tokenizer_config,
        "train_fraction": train_fraction,
        "document_separator": document_separator,
    }


def prepare(
    data_dir: str | os.PathLike,
    tokenizer: dict,
    path: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    train_fraction: float = 0.9,
    document_separator: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Build the bins in `data_dir` unless bins for the same inputs are already there; return meta."""
    data_dir = Path(data_dir)
    if not 0.0 < train_fraction < 1.0:
        raise UserError(f"data.train_fraction must lie strictly between 0 and 1, got {train_fraction}")
    source = resolve_source(path, url, sha256, Path(cache_dir) if cache_dir else data_dir.parent / "downloads")
    wanted = fingerprint(sha256_of(source), dict(tokenizer), train_fraction, document_separator)
    meta = read_meta(data_dir)
    if meta is not None and meta["fingerprint"] == wanted:
        return meta

    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{source} is not UTF-8 text (bad byte at offset {error.start}); convert it to UTF-8") from None
    if not text:
        raise UserError(f"{source} is empty; point data.path at a file with text in it")

    split_at = split_point(text, train_fraction, document_separator)
    texts = {"train": text[:split_at], "val": text[split_at:]}
    tok = fit_tokenizer(dict(tokenizer), text)
    dtype = token_dtype(tok.vocab_size)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "meta.json").unlink(missing_ok=True)
    splits = {}
    for split in SPLITS:
        ids = encode_documents(tok, texts[split], document_separator)
        write_atomically(data_dir / f"{split}.bin", np.asarray(ids, dtype=dtype).tobytes())
        splits[split] = {"tokens": len(ids), "bytes": len(texts[split].encode("utf-8"))}
    meta = {
        "fingerprint": wanted,
        "source": str(source),
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype.name,
        "splits": splits,
    }
    write_atomically(data_dir / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8"))
    return meta


def split_point(text: str, train_fraction: float, document_separator: str | None) -> int:
    """Character offset where validation starts: at a document boundary when the text has documents."""
    split_at = int(len(text) * train_fraction)
    if document_separator:
        boundary = text.find(document_separator, split_at)
        if boundary != -1:
            return boundary + len(document_separator)
    return split_at


def encode_documents(tok: Tokenizer, text: str, document_separator: str | None) -> list[int]:
    """Token ids of `text`; with documents, each one followed by the end-of-text token."""
    if not document_separator or tok.eot_id is None:
        return tok.encode_batch([text])[0]
    ids = []
    for document in tok.encode_batch([doc for doc in text.split(document_separator) if doc.strip()]):
        ids.extend(document)
        ids.append(tok.eot_id)
    return ids


def write_atomically(path: Path, payload: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)

