"""Each sampling control on hand-made logits, and the batch sampler on a model whose next token is known."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import make

from lmzoo.data import CharTokenizer, TiktokenTokenizer
from lmzoo.errors import UserError
from lmzoo.inference.sampling import (NO_TOKEN, SamplingSettings, TextStream, complete, generate, keep_top_p,
                                      penalize_repetition, sample_next)
from lmzoo.models import LanguageModel, ModelConfig, ModelOutput


class Counter(LanguageModel):
    """Always predicts the token after the current one (mod vocabulary): greedy output is known."""

    def __init__(self, vocab_size: int = 8):
        super().__init__(ModelConfig(vocab_size=vocab_size))
        # The sampler reads the device from the parameters.
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    @property
    def block_size(self) -> int:
        return 16

    def flops_per_token(self, context):
        return 0

    def forward(self, idx, cache=None):
        return ModelOutput(10.0 * F.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float())


def greedy(max_new_tokens, **settings):
    return SamplingSettings(max_new_tokens=max_new_tokens, temperature=0, **settings)


def drawn(logits, draws=300, **controls):
    generator = torch.Generator().manual_seed(0)
    # At temperature 1 the probabilities are the logits' softmax, as the cases below state them.
    settings = SamplingSettings(**{"temperature": 1.0, **controls})
    return {sample_next(logits, settings, generator).item() for _ in range(draws)}


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
    settings = SamplingSettings(temperature=0, repetition_penalty=2.0)
    assert sample_next(torch.tensor([[3.0, 2.0]]), settings, seen=torch.tensor([[0]])).item() == 1


def test_temperature_zero_is_greedy_and_high_temperature_spreads():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    assert drawn(logits, temperature=0.0) == {1}
    assert drawn(logits, temperature=100.0) == {0, 1, 2}


def test_ragged_prompts_read_their_own_text_then_sample():
    steps = torch.stack(list(generate(Counter(), [[1], [5, 6, 7]], greedy(3))), dim=1)
    assert steps.tolist() == [[2, 3, 4, NO_TOKEN, NO_TOKEN], [NO_TOKEN, NO_TOKEN, 0, 1, 2]]


def test_ragged_batch_equals_each_prompt_alone_with_and_without_cache():
    model = make("gpt_rope").eval()
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6, 5], [3, 5, 8, 9]]
    for kv_cache in (True, False):
        batch = torch.stack(list(generate(model, prompts, greedy(12, kv_cache=kv_cache))), dim=1)
        for row, prompt in enumerate(prompts):
            alone = torch.cat(list(generate(model, [prompt], greedy(12))))
            assert batch[row][batch[row] != NO_TOKEN].tolist() == alone.tolist()


def test_a_row_ends_with_its_stop_token_while_others_go_on():
    steps = torch.stack(list(generate(Counter(), [[1], [4]], greedy(4), stop_ids=[3])), dim=1)
    assert steps.tolist() == [[2, 3, NO_TOKEN, NO_TOKEN], [5, 6, 7, 0]]
    assert len(list(generate(Counter(), [[1]], greedy(10), stop_ids=[3]))) == 2


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
    pieces = list(complete(Counter(), tokenizer, ["e", "a"], greedy(4)))
    text = {row: "".join(piece for r, piece, _ in pieces if r == row) for row in (0, 1)}
    reasons = {row: reason for row, _, reason in pieces if reason}
    assert text == {0: "fg", 1: "bcde"} and reasons == {0: "eot", 1: "length"}
    pieces = complete(Counter(), tokenizer, ["e"], greedy(4, stop_at_eot=False))
    assert "".join(piece for _, piece, _ in pieces) == "fgha"


def test_complete_with_stop_strings_per_row():
    tokenizer = CharTokenizer("abcdefgh")
    pieces = list(complete(Counter(), tokenizer, ["a", "e"], greedy(7, stop=["de"])))
    text = {row: "".join(piece for r, piece, _ in pieces if r == row) for row in (0, 1)}
    reasons = {row: reason for row, _, reason in pieces if reason}
    # Row 1 ends by length on a "d" that was held back as a possible start of "de", and keeps it.
    assert text == {0: "bc", 1: "fghabcd"} and reasons == {0: "stop", 1: "length"}


@pytest.mark.parametrize("settings, message", [
    (dict(temperature=-0.5), "temperature must be >= 0 and finite (0 decodes greedily), got -0.5"),
    (dict(temperature=float("inf")), "temperature must be >= 0 and finite (0 decodes greedily), got inf"),
    (dict(top_k=0), "top_k must be a positive integer or null, got 0"),
    (dict(top_p=0.0), "top_p must lie in (0, 1] or be null, got 0.0"),
    (dict(top_p=1.5), "top_p must lie in (0, 1] or be null, got 1.5"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0 and finite (1 turns it off), got 0.0"),
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0, got -1"),
    (dict(max_new_tokens="abc"), "max_new_tokens must be an integer, got 'abc'"),
    (dict(top_k=2.5), "top_k must be an integer or null, got 2.5"),
])
def test_meaningless_settings_from_python_are_refused_by_name(settings, message):
    with pytest.raises(UserError, match="^" + re.escape(message) + "$"):
        SamplingSettings(**settings)
    SamplingSettings(temperature=0.0, top_k=1, top_p=1.0, repetition_penalty=1.0)


def test_predictions_of_diverged_weights_are_one_line_not_a_torch_error():
    with pytest.raises(UserError, match="the model's predictions are NaN or inf: its weights have diverged"):
        sample_next(torch.tensor([[0.0, float("nan"), 1.0]]), SamplingSettings(top_k=None))


class CountingTokenizer(TiktokenTokenizer):
    """Counts the token ids it decodes."""

    decoded = 0

    def decode(self, ids):
        self.decoded += len(ids)
        return super().decode(ids)


def test_streaming_decodes_each_token_about_once_and_holds_back_split_characters():
    tokenizer = CountingTokenizer("gpt2")
    text = "宝玉道：「你好」 🙂 " * 50
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer)
    shown = []
    for token in ids:
        piece = stream.push(token)
        assert "\ufffd" not in piece
        shown.append(piece)
    shown.append(stream.finish())
    assert "".join(shown) == text
    # Incremental: a token is decoded again only while its character is incomplete.
    assert tokenizer.decoded < 3 * len(ids)


def test_bytes_that_never_form_a_character_come_out_as_a_replacement_character():
    tokenizer = TiktokenTokenizer("gpt2")
    broken = tokenizer.encode("宝")[:1] * 5
    stream = TextStream(tokenizer)
    text = "".join(stream.push(token) for token in broken) + stream.finish()
    assert text.startswith("\ufffd") and text == tokenizer.decode(broken[:4]) + tokenizer.decode(broken[4:])
