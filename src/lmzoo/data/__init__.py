"""Text to token bins, as plain Python: sources, tokenizers, streaming preparation, and the windows
training and evaluation read."""

from lmzoo.data.bins import BinsMeta, prepare, read_meta
from lmzoo.data.config import DataConfig
from lmzoo.data.tokenizer import BPETokenizer, CharTokenizer, TiktokenTokenizer, Tokenizer, tokenizer_from_spec

__all__ = ["BinsMeta", "DataConfig", "prepare", "read_meta", "Tokenizer", "CharTokenizer", "TiktokenTokenizer", "BPETokenizer",
           "tokenizer_from_spec"]
