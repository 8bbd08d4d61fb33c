"""Tokenizers written as tokenizer.json for transformers' AutoTokenizer: tiktoken encodings as a byte-level
BPE with tiktoken's ranks, the char vocabulary as a word-level one, a trained BPE as it is."""

import base64
import json
import tempfile
from pathlib import Path

import tiktoken

from lmzoo.data.tokenizer import END_OF_TEXT, Tokenizer


def save_tokenizer(tokenizer: Tokenizer, out: Path) -> str:
    """Write tokenizer.json for transformers when the tokenizer has a form it reads; describe what was written."""
    from transformers import PreTrainedTokenizerFast

    spec = tokenizer.spec
    if spec["kind"] == "tiktoken":
        backend, what = tiktoken_backend(tokenizer), f"tokenizer from tiktoken {spec['name']}"
    elif spec["kind"] == "char":
        backend, what = char_backend(tokenizer.chars), "character tokenizer"
    elif spec["kind"] == "bpe":
        backend, what = tokenizer.backend, "byte-level BPE tokenizer"
    else:
        return f"no tokenizer: kind {spec['kind']!r} has no transformers form"
    end = END_OF_TEXT if tokenizer.eot_id is not None else None
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=end, eos_token=end, clean_up_tokenization_spaces=False
    ).save_pretrained(out)
    return what


def tiktoken_backend(tokenizer):
    """tokenizers' byte-level BPE with tiktoken's ranks, split pattern, and special tokens at tiktoken's ids."""
    from tokenizers import Tokenizer as Backend
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # The arguments tiktoken builds the encoding from, as the constructor it registers for the name gives them.
    parts = tiktoken.registry.ENCODING_CONSTRUCTORS[tokenizer.name]()
    with tempfile.TemporaryDirectory() as folder:
        ranks = Path(folder) / "ranks.tiktoken"
        ranks.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                                 for token, rank in parts["mergeable_ranks"].items()))
        backend = json.loads(TikTokenConverter(vocab_file=str(ranks), pattern=parts["pat_str"]).converted().to_str())
    # Special tokens keep tiktoken's ids, which may leave a gap after the ranks (cl100k_base does): an added
    # token takes its id from the model's vocabulary when it is there, and the next free id otherwise.
    backend["model"]["vocab"] |= parts["special_tokens"]
    backend["added_tokens"] = [
        {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for token, token_id in parts["special_tokens"].items()
    ]
    return Backend.from_str(json.dumps(backend))


def char_backend(chars: str):
    """One token per character, joined back without spaces; a character outside the vocabulary is an error."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    backend = Backend(models.WordLevel({ch: i for i, ch in enumerate(chars)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend
