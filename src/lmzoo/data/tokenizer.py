"""Tokenizers behind one small interface: encode, decode, vocab_size, eot_id and a spec.

The spec is a plain dict that rebuilds the tokenizer. It is stored in meta.json beside the
token bins and in every checkpoint, so sampling never needs the training config or data.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np

from lmzoo.errors import UserError

END_OF_TEXT = "<|endoftext|>"
# The vocabulary of a trained byte-level BPE when the config names none.
BPE_VOCAB_SIZE = 4096


# How many unknown characters an error names.
UNKNOWN_SHOWN = 40

class Tokenizer(Protocol):
    vocab_size: int
    eot_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    @property
    def spec(self) -> dict: ...


class CharTokenizer:
    """One token per character; the vocabulary is the sorted characters of the corpus."""

    eot_id = None

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = len(chars)
        codes = np.array([ord(ch) for ch in chars], dtype=np.uint32)
        self._order = np.argsort(codes)
        self._sorted_codes = codes[self._order]

    @classmethod
    def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    def encode(self, text: str) -> list[int]:
        # Code points looked up in the sorted vocabulary: vectorised, for corpora of gigabytes.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        positions = np.searchsorted(self._sorted_codes, codes)
        known = positions < self.vocab_size
        known[known] = self._sorted_codes[positions[known]] == codes[known]
        if not known.all():
            unknown = "".join(sorted(set(map(chr, codes[~known]))))
            # A corpus in another script has thousands of them: the first few say enough.
            shown = repr(unknown[:UNKNOWN_SHOWN]) + (f" and {len(unknown) - UNKNOWN_SHOWN:,} more"
                                                     if len(unknown) > UNKNOWN_SHOWN else "")
            raise UserError(
                f"text has characters outside the char vocabulary: {shown}; "
                "use only characters that occur in the training corpus"
            )
        return self._order[positions].tolist()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    @property
    def spec(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class TiktokenTokenizer:
    """A tiktoken encoding by name: gpt2, r50k_base, cl100k_base, o200k_base, ..."""

    def __init__(self, name: str):
        import tiktoken

        self.name = name
        try:
            self.encoding = tiktoken.get_encoding(name)
        except ValueError:
            raise UserError(
                f"unknown tiktoken encoding {name!r}; choose one of {', '.join(tiktoken.list_encoding_names())}"
            ) from None
        except Exception as error:
            raise UserError(
                f"could not load tiktoken encoding {name!r} ({type(error).__name__}); offline, "
                "set TIKTOKEN_CACHE_DIR to a folder that holds its files"
            ) from None
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.encoding.eot_token if END_OF_TEXT in self.encoding.special_tokens_set else None

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={END_OF_TEXT} & self.encoding.special_tokens_set)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Corpus text: "<|endoftext|>" written in it is text, not the special token. Callers run this
        # on their own threads; tiktoken releases the GIL while it encodes.
        return [self.encoding.encode_ordinary(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    @property
    def spec(self) -> dict:
        return {"kind": "tiktoken", "name": self.name}


class BPETokenizer:
    """A byte-level BPE learned from the training text with Hugging Face `tokenizers`.

    Its spec embeds the whole tokenizer (the JSON that `tokenizers` saves), so a checkpoint carries it.
    """

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer as Backend

        self.json = tokenizer_json
        self.backend = Backend.from_str(tokenizer_json)
        self.vocab_size = self.backend.get_vocab_size()
        self.eot_id = self.backend.token_to_id(END_OF_TEXT)

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size <= len(alphabet):
            raise UserError(f"tokenizer.vocab_size {vocab_size} is too small; byte-level BPE needs more than "
                            f"{len(alphabet)} (its bytes and <|endoftext|>)")
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=alphabet)
        backend.train_from_iterator(texts, trainer)
        return cls(backend.to_str())

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)

    @property
    def spec(self) -> dict:
        return {"kind": "bpe", "json": self.json}


class IdTokenizer:
    """The tokens of a synthetic task (lmzoo.data.tasks), which are ids and no text: written as numbers, each
    followed by a space, so that a sample reads `12 4103 0 `."""

    eot_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        words = text.split()
        if not all(word.isdigit() and int(word) < self.vocab_size for word in words):
            raise UserError(f"a synthetic task's text is token ids below {self.vocab_size} separated by spaces, "
                            f"such as '12 4103 0', got {text[:40]!r}")
        return [int(word) for word in words]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(f"{i} " for i in ids)

    @property
    def spec(self) -> dict:
        return {"kind": "ids", "vocab_size": self.vocab_size}


def tokenizer_from_spec(spec: dict) -> Tokenizer:
    """Rebuild a tokenizer from the spec stored in meta.json or a checkpoint."""
    if spec["kind"] == "char":
        return CharTokenizer(spec["chars"])
    if spec["kind"] == "tiktoken":
        return TiktokenTokenizer(spec["name"])
    if spec["kind"] == "bpe":
        return BPETokenizer(spec["json"])
    if spec["kind"] == "ids":
        return IdTokenizer(spec["vocab_size"])
    raise UserError(f"unknown tokenizer kind {spec['kind']!r}; use char, tiktoken or bpe")


def fit_tokenizer(config: dict, corpus_texts: Callable[[], Iterator[str]],
                  train_texts: Callable[[], Iterator[str]]) -> Tokenizer:
    """Build the tokenizer a data config asks for, learning a char vocabulary from the whole corpus or
    a BPE from the training split (each given as a function returning a fresh text stream). A config that
    holds a built tokenizer's spec (its chars, or its json) is that tokenizer."""
    kind = config["kind"]
    if kind == "tiktoken" or "chars" in config or "json" in config:
        return tokenizer_from_spec(config)
    if kind == "char":
        return CharTokenizer.fit(corpus_texts())
    return BPETokenizer.train(train_texts(), config.get("vocab_size") or BPE_VOCAB_SIZE)


def describe_tokenizer(spec: dict | None) -> str:
    """A tokenizer in a few words, for messages and model cards: `char tokenizer (65 symbols)`, `tiktoken gpt2`."""
    if spec is None:
        return "no tokenizer"
    if spec["kind"] == "char":
        return f"char tokenizer ({len(spec['chars'])} symbols)"
    if spec["kind"] == "ids":
        return f"ids of a synthetic task ({spec['vocab_size']})"
    return f"{spec['kind']} {spec.get('name', '')}".strip()
