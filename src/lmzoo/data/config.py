"""One declaration of a data set: where its text comes from, how it is tokenized and split, and how
training reads it. `prepare` builds its bins; the trainer's DataModule serves its batches."""

import dataclasses
from pathlib import Path

from lmzoo.errors import UserError, check_field_types


@dataclasses.dataclass(kw_only=True)
class DataConfig:
    # The bins go to ROOT/NAME.
    name: str
    root: str = "data"
    # {kind: char | tiktoken | bpe, name: tiktoken's encoding, vocab_size: for bpe}
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
        # block_size is shared by the data and the model, so it is set at the top level of the config.
        for key, value in (("block_size", self.block_size), ("data.batch_size", self.batch_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserError(f"{key} must be an integer, got {value!r}")
            if value <= 0:
                raise UserError(f"{key} must be positive, got {value}")
        check_field_types(self, "data")
        if not 0.0 < self.train_fraction < 1.0:
            raise UserError(f"data.train_fraction must lie strictly between 0 and 1, got {self.train_fraction}")

    @property
    def data_dir(self) -> Path:
        return Path(self.root).expanduser() / self.name

    @property
    def cache_dir(self) -> Path:
        """Where downloads and exported datasets are kept, shared by every data set under the root."""
        return Path(self.root).expanduser() / "downloads"
