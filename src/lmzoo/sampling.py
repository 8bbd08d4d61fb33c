"""The one sampler every model uses: prefill the prompt once, then one token per step with the KV cache."""

from collections.abc import Iterator

import torch

from lmzoo.models.base import LanguageModel
from lmzoo.tokenizers import Tokenizer


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: LanguageModel, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, kv_cache: bool = True,
             generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) for prompt ids (B, T), one step at a time.

    With the cache, greedy decoding equals the uncached path token for token while the text fits
    the model's context. Past it, the cache slides: it is refilled from the last half context in
    one pass, whereas the uncached path re-reads the last full context at every step.
    """
    window = model.block_size
    context = prompt
    cache = model.new_cache(prompt.size(0)) if kv_cache else None
    logits = model(context[:, -window:], cache)[:, -1]
    for _ in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, generator)
        yield token
        context = torch.cat([context, token[:, None]], dim=1)
        if cache is None:
            logits = model(context[:, -window:])[:, -1]
        elif cache.position >= cache.capacity:
            cache = model.new_cache(prompt.size(0))
            logits = model(context[:, -(window // 2):], cache)[:, -1]
        else:
            logits = model(token[:, None], cache)[:, -1]


def start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of the prompt; an empty prompt starts from end-of-text, or a newline for char models."""
    if prompt:
        return tokenizer.encode(prompt)
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    return tokenizer.encode("\n") if "\n" in getattr(tokenizer, "chars", "") else [0]


def stream_text(tokenizer: Tokenizer, tokens: Iterator[int]) -> Iterator[str]:
    """Decoded text pieces as tokens arrive, holding back bytes until a character is complete."""
    ids: list[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd"):
            continue
        yield text[len(shown):]
        shown = text
    text = tokenizer.decode(ids)
    if len(text) > len(shown):
        yield text[len(shown):]
