"""The one sampler every model uses: prefill the prompt once, then one token per step with the KV cache.

Layers, from logits up: `sample_next` applies the controls (repetition penalty, temperature, top-k,
top-p) to one step's logits; `generate` drives a model over a batch of prompts; `complete` turns
token ids into text pieces, with stop strings, for the command line.
"""

from collections.abc import Iterator, Sequence

import torch

from lmzoo.errors import UserError
from lmzoo.models.base import LanguageModel
from lmzoo.tokenizers import Tokenizer

# What `generate` yields for a row that has no new token at a step: it is still reading its
# prompt, or it has already stopped.
NO_TOKEN = -1


def check_controls(temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float) -> None:
    """Refuse sampling settings that have no meaning, naming the valid range."""
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise UserError(f"top_k must be a positive integer or null, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must lie in (0, 1] or be null, got {top_p}")
    if repetition_penalty <= 0:
        raise UserError(f"repetition_penalty must be > 0 (1 turns it off), got {repetition_penalty}")


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens already in `seen` (B, T) less likely, as CTRL does: positive logits are divided by
    the penalty and negative ones multiplied, so a penalty above 1 always lowers them."""
    previous = logits.gather(-1, seen)
    return logits.scatter(-1, seen, torch.where(previous > 0, previous / penalty, previous * penalty))


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probabilities reach p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the more likely ones before it already reach p; the first always stays.
    drop = probs.cumsum(dim=-1) - probs >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None, top_p: float | None = None,
                repetition_penalty: float = 1.0, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); temperature 0 is greedy.

    The controls apply in the usual order: repetition penalty over the `seen` ids, temperature,
    top-k, then top-p.
    """
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None:
        logits = penalize_repetition(logits, seen, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        logits = keep_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = keep_top_p(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model: LanguageModel, prompt: torch.Tensor | Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, kv_cache: bool = True,
             generator: torch.Generator | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, stop_ids: Sequence[int] = ()) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) for a batch of prompts, one step at a time.

    `prompt` is a (B, T) tensor, or one list of ids per row with lengths that may differ. All rows
    are prefilled in one pass up to the shortest prompt; a longer prompt then feeds its own next
    token at each step instead of a sampled one (as Llama's reference sampler does), so every row
    sees exactly its own text at its true positions, with no padding to mask. A row yields NO_TOKEN
    while it reads its prompt and after it has stopped: after max_new_tokens new tokens, or after a
    token of `stop_ids` (which it yields).

    With the cache, greedy decoding equals the uncached path token for token while the text fits
    the model's context. Past it, the cache slides: it is refilled from the last half context in
    one pass, whereas the uncached path re-reads the last full context at every step.
    """
    device = model.device
    rows = [torch.as_tensor(row, dtype=torch.long) for row in prompt]
    lengths = torch.tensor([len(row) for row in rows], device=device)
    if min(lengths, default=0) == 0:
        raise ValueError("every prompt needs at least one token; see start_ids")
    start, longest, window = int(lengths.min()), int(lengths.max()), model.block_size
    # Every row's tokens so far, prompt and sampled, in one preallocated buffer.
    context = torch.zeros(len(rows), longest + max_new_tokens, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        context[i, : len(row)] = row
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    # Equal prompts without stops need no bookkeeping per row: the common case stays lean.
    per_row = start < longest or len(stops) > 0
    ends = lengths + max_new_tokens
    stopped = torch.zeros_like(lengths, dtype=torch.bool)
    cache = model.new_cache(len(rows)) if kv_cache else None
    logits = model(context[:, max(0, start - window) : start], cache)[:, -1]
    for position in range(start, longest + max_new_tokens):
        seen = context[:, :position] if repetition_penalty != 1.0 else None
        token = sample_next(logits, temperature, top_k, generator, top_p, repetition_penalty, seen)
        if position < longest:
            token = torch.where(lengths > position, context[:, position], token)
        context[:, position] = token
        if per_row:
            silent = (lengths > position) | (ends <= position) | stopped
            yield token.masked_fill(silent, NO_TOKEN)
            stopped |= ~silent & torch.isin(token, stops)
            if bool((stopped | (ends <= position + 1)).all()):
                return
        else:
            yield token
        if position + 1 == longest + max_new_tokens:
            return
        if cache is None:
            logits = model(context[:, max(0, position + 1 - window) : position + 1])[:, -1]
        elif cache.position >= cache.capacity:
            cache = model.new_cache(len(rows))
            logits = model(context[:, position + 1 - window // 2 : position + 1], cache)[:, -1]
        else:
            logits = model(context[:, position : position + 1], cache)[:, -1]


def start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of the prompt; an empty prompt starts from end-of-text, or a newline for char models."""
    if prompt:
        return tokenizer.encode(prompt)
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    return tokenizer.encode("\n") if "\n" in getattr(tokenizer, "chars", "") else [0]


class TextStream:
    """One row's text as its tokens arrive.

    Holds back bytes until a character is complete, and any tail that might be the start of a
    stop string; ends at the first stop string (which is not part of the text) or at `stop_ids`.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), stop_ids: Sequence[int] = ()):
        self.tokenizer, self.stop, self.stop_ids = tokenizer, [s for s in stop if s], set(stop_ids)
        self.ids: list[int] = []
        self.text = ""
        self.reason: str | None = None

    def push(self, token: int) -> str:
        """Take the next token; return the text that is now certain."""
        if token in self.stop_ids:
            self.reason = "eot"
            return self.finish()
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.reason = "stop"
            return self.show(text[:cut])
        return self.show(text[: len(text) - self.held_back(text)])

    def finish(self) -> str:
        """The rest of the text, once no more tokens will come."""
        self.reason = self.reason or "length"
        return self.show(self.tokenizer.decode(self.ids))

    def held_back(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        return max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)

    def show(self, text: str) -> str:
        piece, self.text = text[len(self.text):], text
        return piece


def complete(model: LanguageModel, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int,
             stop: Sequence[str] = (), stop_at_eot: bool = True, **controls) -> Iterator[tuple[int, str, str | None]]:
    """Sample a continuation of every prompt in one batch; yield (row, text piece, reason) as text
    arrives. Each row's last piece carries why it ended: "eot", "stop" (a stop string) or "length";
    the others carry None. `controls` are generate's sampling keywords."""
    eot = [tokenizer.eot_id] if stop_at_eot and tokenizer.eot_id is not None else []
    streams = [TextStream(tokenizer, stop, eot) for _ in prompts]
    steps = generate(model, [start_ids(tokenizer, p) for p in prompts], max_new_tokens, stop_ids=eot, **controls)
    for step in steps:
        for row, token in enumerate(step.tolist()):
            stream = streams[row]
            if token != NO_TOKEN and stream.reason is None:
                piece = stream.push(token)
                if piece or stream.reason:
                    yield row, piece, stream.reason
        if all(stream.reason for stream in streams):
            return
    for row, stream in enumerate(streams):
        if stream.reason is None:
            yield row, stream.finish(), stream.reason
