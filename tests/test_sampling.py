"""Each sampling control on hand-made logits, and the batch sampler on a model whose next token is known."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from lmzoo.models.base import LanguageModel
from lmzoo.errors import UserError
from lmzoo.sampling import (NO_TOKEN, TextStream, check_controls, complete, generate, keep_top_p, penalize_repetition,
                             sample_next)
from lmzoo.tokenizers import CharTokenizer


class Counter(LanguageModel):
    """Always predicts the token after the current one (mod vocabulary): greedy output is known."""

    def __init__(self, vocab_size: int = 8, block_size: int = 16):
        super().__init__(vocab_size, block_size)

    def forward(self, idx, cache=None):
        return 10.0 * F.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float()


def drawn(logits, draws=300, **controls):
    generator = torch.Generator().manual_seed(0)
    return {sample_next(logits, generator=generator, **controls).item() for _ in range(draws)}


# Probabilities 1/2, 1/4, 3/16, 1/16 for tokens 2, 0, 3, 1: the cumulative sums are 0.5, 0.75, 0.9375, 1.
NUCLEUS = torch.log(torch.tensor([[0.25, 0.0625, 0.5, 0.1875]]))


@pytest.mark.parametrize("p, kept", [(0.3, {2}), (0.49, {2}), (0.51, {2, 0}), (0.74, {2, 0}), (0.76, {2, 0, 3}),
                                     (0.93, {2, 0, 3}), (0.95, {2, 0, 3, 1}), (1.0, {2, 0, 3, 1})])
def test_top_p_keeps_exactly_the_smallest_set_reaching_p(p, kept):
    filtered = keep_top_p(NUCLEUS, p)
    assert {i for i in range(4) if math.isfinite(filtered[0, i])} == kept
    assert drawn(NUCLEUS, top_p=p) == kept


def test_repetition_penalty_divides_positive_logits_and_multiplies_negative_ones():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[0, 1, 1]])
    assert penalize_repetition(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert sample_next(torch.tensor([[3.0, 2.0]]), 0, repetition_penalty=2.0, seen=torch.tensor([[0]])).item() == 1


def test_temperature_zero_is_greedy_and_high_temperature_spreads():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    assert drawn(logits, temperature=0.0) == {1}
    assert drawn(logits, temperature=100.0) == {0, 1, 2}


def test_ragged_prompts_read_their_own_text_then_sample():
    steps = torch.stack(list(generate(Counter(), [[1], [5, 6, 7]], 3, temperature=0)), dim=1)
    assert steps.tolist() == [[2, 3, 4, NO_TOKEN, NO_TOKEN], [NO_TOKEN, NO_TOKEN, 0, 1, 2]]


def test_ragged_batch_equals_each_prompt_alone_with_and_without_cache():
    from test_models import ARCHITECTURES

    torch.manual_seed(0)
    model = ARCHITECTURES["gpt_rope"]().eval()
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6, 5], [3, 5, 8, 9]]
    for kv_cache in (True, False):
        batch = torch.stack(list(generate(model, prompts, 12, temperature=0, kv_cache=kv_cache)), dim=1)
        for row, prompt in enumerate(prompts):
            alone = torch.cat(list(generate(model, [prompt], 12, temperature=0)))
            assert batch[row][batch[row] != NO_TOKEN].tolist() == alone.tolist()


def test_a_row_ends_with_its_stop_token_while_others_go_on():
    steps = torch.stack(list(generate(Counter(), [[1], [4]], 4, temperature=0, stop_ids=[3])), dim=1)
    assert steps.tolist() == [[2, 3, NO_TOKEN, NO_TOKEN], [5, 6, 7, 0]]
    assert len(list(generate(Counter(), [[1]], 10, temperature=0, stop_ids=[3]))) == 2


def test_stop_string_ends_the_text_and_a_possible_start_is_held_back():
    tokenizer = CharTokenizer("ENDhelo w")
    stream = TextStream(tokenizer, stop=["END"])
    shown = [stream.push(tokenizer.encode(ch)[0]) for ch in "hello E"]
    assert "".join(shown) == "hello " and stream.reason is None
    assert stream.push(tokenizer.encode("w")[0]) == "Ew"
    assert [stream.push(i) for i in tokenizer.encode("oEND")] == ["o", "", "", ""]
    assert stream.text == "hello Ewo" and stream.reason == "stop"


def test_complete_stops_at_end_of_text_unless_told_not_to():
    tokenizer = CharTokenizer("abcdefgh")
    tokenizer.eot_id = 7
    pieces = list(complete(Counter(), tokenizer, ["e", "a"], 4, temperature=0))
    text = {row: "".join(piece for r, piece, _ in pieces if r == row) for row in (0, 1)}
    reasons = {row: reason for row, _, reason in pieces if reason}
    assert text == {0: "fg", 1: "bcde"} and reasons == {0: "eot", 1: "length"}
    pieces = complete(Counter(), tokenizer, ["e"], 4, stop_at_eot=False, temperature=0)
    assert "".join(piece for _, piece, _ in pieces) == "fgha"


def test_complete_with_stop_strings_per_row():
    tokenizer = CharTokenizer("abcdefgh")
    pieces = list(complete(Counter(), tokenizer, ["a", "e"], 7, stop=["de"], temperature=0))
    text = {row: "".join(piece for r, piece, _ in pieces if r == row) for row in (0, 1)}
    reasons = {row: reason for row, _, reason in pieces if reason}
    # Row 1 ends by length on a "d" that was held back as a possible start of "de", and keeps it.
    assert text == {0: "bc", 1: "fghabcd"} and reasons == {0: "stop", 1: "length"}


@pytest.mark.parametrize("controls, message", [
    ((-0.5, None, None, 1.0), "temperature must be >= 0"),
    ((1.0, 0, None, 1.0), "top_k must be a positive integer or null"),
    ((1.0, None, 0.0, 1.0), "top_p must lie in (0, 1] or be null"),
    ((1.0, None, 1.5, 1.0), "top_p must lie in (0, 1] or be null"),
    ((1.0, None, None, 0.0), "repetition_penalty must be > 0 (1 turns it off)"),
])
def test_meaningless_controls_are_refused_by_name(controls, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_controls(*controls)
    check_controls(0.0, 1, 1.0, 1.0)
