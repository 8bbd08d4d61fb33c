"""One declaration of a data set: where its text comes from, how it is tokenized and split, and how
training reads it. `prepare` builds its bins; the trainer's DataModule serves its batches."""

import dataclasses
from pathlib import Path

from lmzoo.data.tokenizer import BPE_VOCAB_SIZE
from lmzoo.errors import UserError, check_field_types

TOKENIZER_KINDS = ("char", "tiktoken", "bpe")
# What a tokenizer config may hold: how to build one, or (chars, json) a built one's spec, as checkpoints record it.
TOKENIZER_KEYS = ("kind", "name", "vocab_size", "chars", "json")


@dataclasses.dataclass(kw_only=True)
class DataConfig:
    # The bins go to ROOT/NAME.
    name: str
    root: str = "data"
    # {kind: char | tiktoken | bpe, name: tiktoken's encoding, vocab_size: for bpe}, or a tokenizer's spec
    tokenizer: dict = dataclasses.field(default_factory=lambda: {"kind": "char"})
    # Local text: a file, a folder of .txt files, or a glob; used instead of the URL.
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    # A separate validation text (file, folder or glob); null cuts train_fraction off the text.
    val_path: str | None = None
    # A Hugging Face dataset, used when there is neither path nor url: {name, config, split, val_split, text_column}.
    dataset: dict | None = None
    train_fraction: float = 0.9
    # The test split: the last test_fraction of the held-out text (what follows train_fraction, or val_path's or
    # val_split's), never read by training, early stopping, checkpoint choice or a tune; validation is the rest.
    test_fraction: float = 0.5
    # Text between documents, replaced by <|endoftext|> for tokenizers that have it; null: one document.
    document_separator: str | None = None
    # Token dtype: null picks uint16 when the vocabulary fits, else uint32.
    dtype: str | None = None
    # Threads that tokenize while preparing; null uses every core, up to 8.
    prepare_workers: int | None = None
    block_size: int = 64
    batch_size: int = 32
    # Validation uses the same val_batches x batch_size windows every time.
    val_batches: int = 20
    num_workers: int = 0
    seed: int = 1337

    def __post_init__(self):
        if isinstance(self.tokenizer, str):
            raise UserError(f"data.tokenizer={self.tokenizer} does not pick a tokenizer; pass tokenizer={self.tokenizer} "
                            "(char, gpt2, cl100k_base or bpe), or data.tokenizer.name=NAME for another tiktoken encoding")
        # block_size is shared by the data and the model, so it is set at the top level of the config.
        for key, value in (("block_size", self.block_size), ("data.batch_size", self.batch_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserError(f"{key} must be an integer, got {value!r}")
            if value <= 0:
                raise UserError(f"{key} must be positive, got {value}")
        check_field_types(self, "data")
        check_tokenizer_config(self.tokenizer)
        if not 0.0 < self.train_fraction < 1.0:
            raise UserError(f"data.train_fraction must lie strictly between 0 and 1, got {self.train_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"data.test_fraction (the held-out text's share kept for test) must lie strictly between "
                            f"0 and 1, got {self.test_fraction}")
        if self.dtype not in (None, "uint16", "uint32"):
            raise UserError(f"data.dtype must be uint16, uint32 or null (the smallest that fits), got {self.dtype!r}")
        for key, least in (("prepare_workers", 1), ("val_batches", 1), ("num_workers", 0)):
            value = getattr(self, key)
            if value is not None and value < least:
                raise UserError(f"data.{key} must be {'positive' if least else '>= 0'}"
                                f"{' or null (every core, up to 8)' if key == 'prepare_workers' else ''}, got {value}")

    @property
    def data_dir(self) -> Path:
        """ROOT/NAME/TOKENIZER: each tokenizer of a data set has its own bins."""
        return Path(self.root).expanduser() / self.name / tokenizer_folder(self.tokenizer)

    @property
    def cache_dir(self) -> Path:
        """Where downloads and exported datasets are kept, shared by every data set under the root."""
        return Path(self.root).expanduser() / "downloads"


def check_tokenizer_config(tokenizer: dict) -> None:
    unknown = [key for key in tokenizer if key not in TOKENIZER_KEYS]
    if unknown:
        raise UserError(f"data.tokenizer has no key {unknown[0]}; its keys are kind, name and vocab_size")
    kind, name, vocab_size = tokenizer.get("kind"), tokenizer.get("name"), tokenizer.get("vocab_size")
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"data.tokenizer.kind must be one of {', '.join(TOKENIZER_KINDS)}, got {kind!r}")
    if kind == "tiktoken" and not isinstance(name, str):
        raise UserError(f"data.tokenizer.name must name a tiktoken encoding (gpt2, cl100k_base, ...), got {name!r}")
    if vocab_size is not None and (kind != "bpe" or not isinstance(vocab_size, int) or isinstance(vocab_size, bool)):
        raise UserError(f"data.tokenizer.vocab_size must be an integer, for tokenizer=bpe only (the {kind} vocabulary "
                        f"is fixed), got {vocab_size!r}")


def tokenizer_folder(tokenizer: dict) -> str:
    """The folder name of a tokenizer's bins: char, gpt2, cl100k_base, bpe-4096."""
    if tokenizer["kind"] == "tiktoken":
        return tokenizer["name"]
    if tokenizer["kind"] == "bpe" and "json" not in tokenizer:
        return f"bpe-{tokenizer.get('vocab_size') or BPE_VOCAB_SIZE}"
    return tokenizer["kind"]
