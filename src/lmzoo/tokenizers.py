"""Tokenizers behind one small interface: encode, decode, vocab_size, eot_id and a spec.

The spec is a plain dict that rebuilds the tokenizer. It is stored in meta.json beside the
token bins and in every checkpoint, so sampling never needs the training config or data.
"""

from typing import Protocol

from lmzoo.errors import UserError


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
        self._index = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[ch] for ch in text]
        except KeyError:
            unknown = sorted({ch for ch in text if ch not in self._index})
            raise UserError(
                f"text has characters outside the char vocabulary: {''.join(unknown)!r}; "
                "use only characters that occur in the training corpus"
            ) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    @property
    def spec(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class TiktokenTokenizer:
    """A tiktoken encoding by name: gpt2, r50k_base, cl100k_base, o200k_base, ..."""

    END_OF_TEXT = "<|endoftext|>"

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
        self.eot_id = self.encoding._special_tokens.get(self.END_OF_TEXT)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={self.END_OF_TEXT} & self.encoding.special_tokens_set)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    @property
    def spec(self) -> dict:
        return {"kind": "tiktoken", "name": self.name}


def tokenizer_from_spec(spec: dict) -> Tokenizer:
    """Rebuild a tokenizer from the spec stored in meta.json or a checkpoint."""
    if spec["kind"] == "char":
        return CharTokenizer(spec["chars"])
    if spec["kind"] == "tiktoken":
        return TiktokenTokenizer(spec["name"])
    raise UserError(f"unknown tokenizer kind {spec['kind']!r}; use char or tiktoken")


def fit_tokenizer(config: dict, text: str) -> Tokenizer:
    """Build the tokenizer a data config asks for, learning its vocabulary from `text` if it has one."""
    kind = config.get("kind")
    if kind == "char":
        return CharTokenizer.fit(text)
    if kind == "tiktoken":
        return TiktokenTokenizer(config["name"])
    raise UserError(f"unknown tokenizer kind {kind!r}; set data.tokenizer.kind to char or tiktoken")
