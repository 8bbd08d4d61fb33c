"""The one sampler every model uses: prefill the prompt once, then one token per step with the KV cache.

Layers, from logits up: `sample_next` applies the controls (repetition penalty, temperature, top-k,
top-p) to one step's logits; `generate` drives a model over a batch of prompts; `complete` turns
token ids into text pieces, with stop strings; `sample_text` returns one finished text.
"""

import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch

from lmzoo.data.tokenizer import Tokenizer
from lmzoo.errors import UserError, check_field_types
from lmzoo.memory import check_fits_in_memory
from lmzoo.models import LanguageModel

# What `generate` yields for a row that has no new token at a step: it is still reading its
# prompt, or it has already stopped.
NO_TOKEN = -1
# A UTF-8 character has at most 4 bytes, and every token at least one.
MAX_CHARACTER_TOKENS = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """How to sample, checked when made: a meaningless value is a UserError naming the valid range,
    from Python as from the command line. Its defaults are those of python -m lmzoo.generate and of the sample
    that ends a training run."""

    max_new_tokens: int = 500
    # 0 decodes greedily.
    temperature: float = 0.8
    # Sample only from the k most likely tokens (None: all).
    top_k: int | None = None
    # Nucleus: only from the smallest set of most likely tokens whose probabilities reach top_p (None: all).
    top_p: float | None = None
    # Above 1 makes tokens already in the text less likely (1.2 is a common choice; 1 turns it off).
    repetition_penalty: float = 1.0
    # Strings that end a sample (they are not part of its text).
    stop: tuple[str, ...] = ()
    # End a sample at the tokenizer's end-of-text token, when it has one.
    stop_at_eot: bool = True
    # False recomputes the whole context at every step.
    kv_cache: bool = True

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop) if isinstance(self.stop, (list, tuple)) else self.stop)
        check_field_types(self, None)
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        # NaN fails every comparison, and inf divides every logit to 0 (uniform sampling): neither is a temperature.
        if not 0 <= self.temperature < math.inf:
            raise UserError(f"temperature must be >= 0 and finite (0 decodes greedily), got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            raise UserError(f"top_k must be a positive integer or null, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p must lie in (0, 1] or be null, got {self.top_p}")
        if not 0 < self.repetition_penalty < math.inf:
            raise UserError(f"repetition_penalty must be > 0 and finite (1 turns it off), got "
                            f"{self.repetition_penalty}")


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


def sample_next(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None = None,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); temperature 0 is greedy.

    The controls apply in the usual order: repetition penalty over the `seen` ids, temperature,
    top-k, then top-p.
    """
    logits = logits.float()
    if settings.repetition_penalty != 1.0 and seen is not None:
        logits = penalize_repetition(logits, seen, settings.repetition_penalty)
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.size(-1):
        logits = keep_top_k(logits, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1.0:
        logits = keep_top_p(logits, settings.top_p)
    try:
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    except RuntimeError as error:
        # torch refuses NaN or inf probabilities; checking the logits first would cost a device sync per token.
        if "probability tensor contains" not in str(error):
            raise
        raise UserError("the model's predictions are NaN or inf: its weights have diverged; sample from a checkpoint "
                        "saved before the divergence, or train again with a lower optim.lr") from None


@torch.inference_mode()
def generate(model: LanguageModel, prompts: torch.Tensor | Sequence[Sequence[int]], settings: SamplingSettings,
             *, generator: torch.Generator | None = None, stop_ids: Sequence[int] = ()) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) for a batch of prompts, one step at a time.

    `prompts` is a (B, T) tensor, or one list of ids per row with lengths that may differ. All rows
    are prefilled in one pass up to the shortest prompt; a longer prompt then feeds its own next
    token at each step instead of a sampled one (as Llama's reference sampler does), so every row
    sees exactly its own text at its true positions, with no padding to mask. A row yields NO_TOKEN
    while it reads its prompt and after it has stopped: after max_new_tokens new tokens, or after a
    token of `stop_ids` (which it yields).

    With the cache, greedy decoding equals the uncached path token for token while the text fits
    the model's context. Past it, the cache slides: once full, it is refilled from the last half
    context in one pass, whereas the uncached path re-reads the last full context at every step. A
    cache without capacity (a model with no attention layer) is never full: it reads on forever.
    """
    device = model.device
    rows = [torch.as_tensor(row, dtype=torch.long) for row in prompts]
    lengths = torch.tensor([len(row) for row in rows], device=device)
    if min(lengths, default=0) == 0:
        raise UserError("every prompt needs at least one token; see start_ids")
    max_new_tokens = settings.max_new_tokens
    start, longest, window = int(lengths.min()), int(lengths.max()), model.block_size
    # Every row's tokens so far, prompt and sampled, in one preallocated buffer.
    check_tokens_fit(len(rows), longest + max_new_tokens, device)
    context = torch.zeros(len(rows), longest + max_new_tokens, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        context[i, : len(row)] = row
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    # Equal prompts without stops need no bookkeeping per row: the common case stays lean.
    per_row = start < longest or len(stops) > 0
    ends = lengths + max_new_tokens
    stopped = torch.zeros_like(lengths, dtype=torch.bool)
    cache = model.new_cache() if settings.kv_cache else None
    if max_new_tokens == 0:
        return
    logits = model(context[:, max(0, start - window) : start], cache).logits[:, -1]
    for position in range(start, longest + max_new_tokens):
        seen = context[:, :position] if settings.repetition_penalty != 1.0 else None
        token = sample_next(logits, settings, generator, seen)
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
            logits = model(context[:, max(0, position + 1 - window) : position + 1]).logits[:, -1]
        elif cache.full:
            cache = model.new_cache()
            logits = model(context[:, position + 1 - window // 2 : position + 1], cache).logits[:, -1]
        else:
            logits = model(context[:, position : position + 1], cache).logits[:, -1]


def check_tokens_fit(samples: int, length: int, device: torch.device) -> None:
    """Refuse `samples` texts of `length` tokens (prompt and new ones) whose ids would not fit in the memory of
    `device`, before allocating them."""
    size = samples * length * torch.iinfo(torch.long).bits // 8
    check_fits_in_memory(size, device, f"{samples:,} sample(s) of {length:,} tokens need {size / 1e9:,.0f} GB",
                         "lower max_new_tokens or num_samples")


def start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of the prompt; an empty prompt starts from end-of-text, or a newline for char models."""
    if prompt:
        return tokenizer.encode(prompt)
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    return tokenizer.encode("\n") if "\n" in getattr(tokenizer, "chars", "") else [0]


class TextStream:
    """One row's text as its tokens arrive, decoded incrementally.

    Only the tokens since the last complete character are decoded at each step, so streaming n tokens
    costs O(n). Bytes are held back until a character completes (a token sequence that never completes
    one, at most MAX_CHARACTER_TOKENS long, comes out as U+FFFD), and so is any tail that might begin a
    stop string. The text ends at the first stop string (which is not part of it) or at `stop_ids`.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), stop_ids: Sequence[int] = ()):
        self.tokenizer, self.stop, self.stop_ids = tokenizer, [s for s in stop if s], set(stop_ids)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.undecoded: list[int] = []
        # Everything decoded so far, and how much of it has been shown.
        self.text = ""
        self.shown = 0
        self.reason: str | None = None

    def push(self, token: int) -> str:
        """Take the next token; return the text that is now certain."""
        if token in self.stop_ids:
            self.reason = "eot"
            return self.finish()
        self.undecoded.append(token)
        piece = self.tokenizer.decode(self.undecoded)
        if piece.endswith("\ufffd") and len(self.undecoded) < MAX_CHARACTER_TOKENS:
            return ""
        self.undecoded = []
        # A stop string that ends in this piece starts at most longest_stop - 1 characters before it.
        search_from = max(0, len(self.text) - self.longest_stop + 1)
        self.text += piece
        cut = min((i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.reason = "stop"
            self.text = self.text[:cut]
            return self.show(len(self.text))
        return self.show(len(self.text) - self.held_back())

    def finish(self) -> str:
        """The rest of the text, once no more tokens will come."""
        self.reason = self.reason or "length"
        if self.undecoded:
            self.text += self.tokenizer.decode(self.undecoded)
            self.undecoded = []
        return self.show(len(self.text))

    def held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        tail = self.text[-self.longest_stop:] if self.longest_stop else ""
        return max((n for s in self.stop for n in range(1, len(s)) if tail.endswith(s[:n])), default=0)

    def show(self, upto: int) -> str:
        piece = self.text[self.shown : upto]
        self.shown = max(self.shown, upto)
        return piece


def complete(model: LanguageModel, tokenizer: Tokenizer, prompts: Sequence[str], settings: SamplingSettings,
             *, generator: torch.Generator | None = None) -> Iterator[tuple[int, str, str | None]]:
    """Sample a continuation of every prompt in one batch; yield (row, text piece, reason) as text
    arrives. Each row's last piece carries why it ended: "eot", "stop" (a stop string) or "length";
    the others carry None."""
    eot = [tokenizer.eot_id] if settings.stop_at_eot and tokenizer.eot_id is not None else []
    streams = [TextStream(tokenizer, settings.stop, eot) for _ in prompts]
    steps = generate(model, [start_ids(tokenizer, p) for p in prompts], settings, generator=generator, stop_ids=eot)
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


def sample_text(model: LanguageModel, tokenizer: Tokenizer, prompt: str, settings: SamplingSettings,
                generator: torch.Generator | None = None) -> str:
    """One continuation of `prompt`, as text (the prompt not included)."""
    return "".join(piece for _, piece, _ in complete(model, tokenizer, [prompt], settings, generator=generator))
