"""The sequence mixers of the registry (lmzoo.models.base.SequenceMixer) and the presets that hold them, generic
over both: a recurrence's chunked form equals its step-by-step form, decoding with a flat state equals reading the
whole text and keeps its size however long the text, a hybrid caches each layer's own state, and a layer equals the
transformers layer its file names. A new mixer is tested here with no edit."""

import dataclasses

import pytest
import torch
from helpers import BLOCK, PRESETS, V, counted_flops_per_token, make, tiny_config

from lmzoo.inference.sampling import SamplingSettings, generate
from lmzoo.models import TransformerConfig
from lmzoo.models.base import Kind, SequenceMixer, sized
from lmzoo.models.cache import KVState
from lmzoo.models.gated_deltanet import unit_lower_solve
from lmzoo.models.recurrent import RecurrentState, ShortConv, decayed

MIXERS = SequenceMixer.registry
# The mixers with a recurrence to prove, each with its chunked form, step and inputs (SequenceMixer.scan).
SCANS = {name: mixer.scan for name, mixer in MIXERS.items() if mixer.scan is not None}
# Each mixer's settings in the tiny presets that hold it, and the kinds of each preset's mixers.
SETTINGS = {mixer: settings for name in PRESETS for mixer, settings in getattr(tiny_config(name), "mixers", {}).items()}
KINDS = {name: {mixer.kind for mixer in getattr(make(name), "mixers", list)()} for name in PRESETS}
# The presets with a layer of flat state, those of them whose every layer is one, and the others (hybrids).
RECURRENT = [name for name in PRESETS if Kind.FLAT in KINDS[name]]
ONLY_RECURRENT = [name for name in RECURRENT if KINDS[name] == {Kind.FLAT}]
HYBRIDS = [name for name in RECURRENT if KINDS[name] - {Kind.FLAT}]


def chunked_model(name: str, chunk: int = 8):
    """Preset `name`'s tiny model (helpers.tiny_config), seeded, with chunks of `chunk` tokens in every mixer that
    has them: over BLOCK tokens the scans pass their state from chunk to chunk."""
    torch.manual_seed(0)
    config = tiny_config(name)
    mixers = {mixer: dataclasses.replace(settings, chunk_size=chunk) if hasattr(settings, "chunk_size") else settings
              for mixer, settings in config.mixers.items()}
    return dataclasses.replace(config, mixers=mixers).build().eval()


def recurrence(step, inputs, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs and final state of `step` applied token by token."""
    outputs = []
    for t in range(inputs[0].size(2)):
        output, state = step(*(x[:, :, t] if x.dim() > 1 else x for x in inputs), state)
        outputs.append(output)
    return torch.stack(outputs, dim=2), state


@pytest.mark.parametrize("mixer", SCANS)
@pytest.mark.parametrize("chunk", [1, 3, 8, 16])
def test_the_chunked_form_equals_the_step_by_step_recurrence(mixer, chunk):
    """Over 13 tokens (no multiple of 3 or 8; 16 is longer than the text), from a zero state and from a given one."""
    torch.manual_seed(0)
    scan = SCANS[mixer]
    inputs = scan.inputs(13)
    shape = scan.chunked(*inputs, chunk)[1].shape
    for start in (None, torch.randn(shape)):
        expected, final = recurrence(scan.step, inputs, torch.zeros(shape) if start is None else start)
        outputs, state = scan.chunked(*inputs, chunk, start)
        torch.testing.assert_close(outputs, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(state, final, atol=1e-5, rtol=0)
        # Training keeps no final state: the last chunk's update is skipped, the outputs the same.
        unkept, none = scan.chunked(*inputs, chunk, start, final_state=False)
        assert none is None and torch.equal(unkept, outputs)


@pytest.mark.parametrize("mixer", SCANS)
@pytest.mark.parametrize("chunk", [3, 8])
def test_the_chunked_forms_gradients_equal_the_step_by_step_recurrences(mixer, chunk):
    """Through the outputs and the final state, to every input and the given state, over 13 tokens."""
    torch.manual_seed(0)
    scan = SCANS[mixer]
    inputs = [t.requires_grad_() for t in scan.inputs(13)]
    start = torch.randn(scan.chunked(*inputs, chunk)[1].shape, requires_grad=True)
    results = [scan.chunked(*inputs, chunk, start), recurrence(scan.step, inputs, start)]
    weight = torch.randn_like(results[0][0])
    gradients = [torch.autograd.grad((outputs * weight).sum() + state.square().sum(), [*inputs, start])
                 for outputs, state in results]
    for ours, expected in zip(*gradients):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", SCANS)
def test_the_chunked_form_multiplies_bf16_operands_in_bf16_and_keeps_its_state_in_float32(mixer):
    """As the reference kernels under autocast: within bf16's precision of the float32 form, over 40 tokens in
    chunks of 8 from a given state."""
    torch.manual_seed(0)
    scan = SCANS[mixer]
    inputs = scan.inputs(40)
    start = torch.randn(scan.chunked(*inputs, 8)[1].shape)
    expected, final = scan.chunked(*inputs, 8, start)
    low = [t.bfloat16() if i in scan.operands else t for i, t in enumerate(inputs)]
    outputs, state = scan.chunked(*low, 8, start)
    assert state.dtype == torch.float32
    torch.testing.assert_close(outputs.float(), expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(state, final, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("mixer", SCANS)
def test_a_compiled_chunked_form_gives_the_eager_ones_outputs_and_gradients(mixer):
    """compile=true traces the scans' own operator and autograd functions (the solve, the decays): through
    AOTAutograd (backend aot_eager, which builds no kernels, so the test stays fast) the same outputs, final state
    and gradients, over 3 chunks of 8 from a given state."""
    torch.manual_seed(0)
    scan = SCANS[mixer]
    inputs = [t.requires_grad_() for t in scan.inputs(20)]
    start = torch.randn(scan.chunked(*inputs, 8)[1].shape)
    results = []
    for run in (scan.chunked, torch.compile(scan.chunked, backend="aot_eager", fullgraph=True)):
        outputs, state = run(*inputs, 8, start)
        results.append((outputs, state, *torch.autograd.grad(outputs.square().sum() + state.sum(), inputs)))
    for compiled, eager in zip(results[1], results[0]):
        torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)


def test_the_decayed_scores_gradients_equal_autograds_of_their_formula():
    """decayed() has its own backward: against autograd's of scores * exp(l_i - l_j) on the lower triangle, with
    gradients through both outputs and through the first only."""
    torch.manual_seed(0)
    log_decay = (-torch.rand(2, 3, 6, dtype=torch.float64)).cumsum(-1).requires_grad_()
    scores = [torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    upper = torch.ones(6, 6, dtype=torch.bool).triu(1)
    plain = [score * (log_decay[..., :, None] - log_decay[..., None, :]).masked_fill(upper, float("-inf")).exp()
             for score in scores]
    ours = decayed(log_decay, *scores)
    for used in (2, 1):
        weights = [torch.randn(2, 3, 6, 6, dtype=torch.float64) for _ in range(used)]
        gradients = [torch.autograd.grad(sum((output * weight).sum() for output, weight in zip(outputs, weights)),
                                         [log_decay, *scores[:used]], retain_graph=True) for outputs in (ours, plain)]
        for theirs, expected in zip(*gradients):
            torch.testing.assert_close(theirs, expected, atol=1e-12, rtol=1e-12)
    for output, expected in zip(ours, plain):
        assert torch.equal(output, expected)


@pytest.mark.parametrize("n", [1, 3, 13, 64])
def test_the_unit_triangular_solve_equals_lapacks_with_its_gradients(n):
    """Gated DeltaNet's solve by the inverse (unit_lower_solve) against torch.linalg.solve_triangular's, on a
    matrix whose diagonal and upper triangle it must ignore, its gradient on the strictly lower triangle only; n
    of 13 is no power of 2."""
    torch.manual_seed(0)
    matrix = (0.3 * torch.randn(2, 3, n, n, dtype=torch.float64)).requires_grad_()
    right = torch.randn(2, 3, n, 5, dtype=torch.float64, requires_grad=True)
    ours = unit_lower_solve(matrix, right)[0]
    lapack = torch.linalg.solve_triangular(matrix, right, upper=False, unitriangular=True)
    torch.testing.assert_close(ours, lapack, atol=1e-12, rtol=1e-12)
    weight = torch.randn_like(lapack)
    for theirs, expected in zip(torch.autograd.grad((ours * weight).sum(), [matrix, right]),
                                torch.autograd.grad((lapack * weight).sum(), [matrix, right])):
        torch.testing.assert_close(theirs, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_the_short_convolutions_gradients_equal_autograds_of_its_shifted_sum(bias):
    """ShortConv's own backward, against autograd's of the same sum written out, from a zero past and a given one."""
    torch.manual_seed(0)
    conv = ShortConv(5, 4, bias=bias).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 7, 5, dtype=torch.float64)
    for past in (None, torch.randn(2, 3, 5, dtype=torch.float64)):
        state = RecurrentState()
        state.conv = past
        padded = torch.cat((past if past is not None else torch.zeros(2, 3, 5, dtype=torch.float64), x), dim=1)
        taps = conv.weight[:, 0]
        plain = sum(padded[:, tap : tap + 7] * taps[:, tap] for tap in range(4)) + (conv.bias if bias else 0)
        ours = conv(x, state)
        assert torch.equal(state.conv, padded[:, -3:])
        torch.testing.assert_close(ours, plain, atol=1e-12, rtol=1e-12)
        parameters = [x, *conv.parameters()]
        for theirs, expected in zip(torch.autograd.grad((ours * weight).sum(), parameters),
                                    torch.autograd.grad((plain * weight).sum(), parameters)):
            torch.testing.assert_close(theirs, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("mixer", [name for name, scan in SCANS.items() if scan.kernel is not None])
def test_the_fast_kernels_give_the_same_outputs_and_gradients(mixer):
    """On CUDA with the kernel's package installed (mamba_ssm, flash-linear-attention), a layer uses it instead."""
    scan = SCANS[mixer]
    available, kernel, package = scan.kernel
    if available() is None:
        pytest.skip(f"{package} is not installed")
    torch.manual_seed(0)
    # 100 tokens: a chunk of 64 and a part of one; 64-wide heads, as the kernels are tuned for.
    inputs = [t.cuda().requires_grad_() for t in scan.inputs(100, 4, 64, 64)]
    results = []
    for run in (scan.chunked, kernel):
        output, state = run(*inputs, 64)
        grads = torch.autograd.grad((output.square().sum() + state.square().sum()), inputs)
        results.append((output, state, *grads))
    for ours, theirs in zip(*results):
        # The kernels multiply in TF32.
        torch.testing.assert_close(theirs, ours, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", RECURRENT)
def test_flops_per_token_equal_pytorchs_count_over_several_chunks(name):
    """The zoo's test reads one chunk; over 3 chunks of 8 the state is read in every chunk but the first and
    updated in every one but the last."""
    model = chunked_model(name)
    assert model.flops_per_token(BLOCK) == counted_flops_per_token(model, torch.randint(0, V, (3, BLOCK)))


# The options each recurrent mixer's Hugging Face layout declares it covers (HFLayout.examples), some of which no
# preset takes (Mamba-2's B and C shared by several groups of heads).
EXAMPLES = {f"{name}:{example}": settings for name in SCANS if MIXERS[name].hf is not None
            for example, (settings, _) in MIXERS[name].hf.examples.items()}


@pytest.mark.parametrize("example", EXAMPLES)
def test_flops_per_token_equal_pytorchs_count_in_the_options_of_the_exports(example):
    """At width 32 over 3 chunks of 8, as the previous test."""
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_embd=32, **EXAMPLES[example]).build()
    assert model.flops_per_token(BLOCK) == counted_flops_per_token(model, torch.randint(0, V, (3, BLOCK)))


@pytest.mark.parametrize("name", RECURRENT)
def test_cached_logits_equal_uncached_and_greedy_text_too(name):
    """A prefill of 7 tokens (within a chunk of 8, then across it as the steps go on), then one token at a time."""
    model = chunked_model(name)
    idx = torch.randint(0, V, (2, BLOCK))
    with torch.no_grad():
        full = model(idx).logits
        cache = model.new_cache()
        stepped = [model(idx[:, :7], cache).logits] + [model(idx[:, t : t + 1], cache).logits for t in range(7, BLOCK)]
    assert cache.position == BLOCK
    torch.testing.assert_close(torch.cat(stepped, dim=1), full, atol=1e-5, rtol=0)
    prompt = idx[:, :4]
    cached, uncached = (torch.stack(list(generate(model, prompt, SamplingSettings(max_new_tokens=BLOCK - 4, temperature=0,
                                                                                  kv_cache=kv))), dim=1)
                        for kv in (True, False))
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", ONLY_RECURRENT)
def test_model_dropout_acts_on_a_recurrent_mixers_output_in_training_only(name):
    model = dataclasses.replace(tiny_config(name), dropout=0.5).build()
    mixer = model.mixers()[0]
    x = torch.randn(2, BLOCK, tiny_config(name).n_embd)
    assert not torch.equal(mixer.train()(x), mixer(x))
    assert torch.equal(mixer.eval()(x), mixer(x))


@pytest.mark.parametrize("name", ONLY_RECURRENT)
def test_a_recurrent_model_decodes_past_block_size_in_constant_memory(name):
    """No layer's state grows: the cache has no capacity, holds as many bytes after 3 * block_size tokens as after
    the prompt (what describe states), and the greedy text is what the model predicts from the whole text."""
    model = make(name).eval()
    assert model.new_cache().capacity is None
    idx = torch.randint(0, V, (1, 3 * model.block_size))
    cache = model.new_cache()
    with torch.no_grad():
        model(idx[:, :5], cache)
        after_prompt = cache.nbytes()
        for t in range(5, idx.size(1)):
            model(idx[:, t : t + 1], cache)
    assert cache.nbytes() == after_prompt == model.state_bytes()
    assert f"decoding state per sequence: {model.state_bytes():,} bytes" in "\n".join(model.describe())
    prompt = idx[:, :4]
    new = generate(model, prompt, SamplingSettings(max_new_tokens=2 * model.block_size, temperature=0))
    text = torch.cat([prompt, torch.stack(list(new), dim=1)], dim=1)
    # A forward pass reads at most block_size tokens: the whole text goes through a cache, piece by piece.
    reader = model.new_cache()
    with torch.no_grad():
        predicted = torch.cat([model(piece, reader).logits for piece in text[:, :-1].split(model.block_size, dim=1)],
                              dim=1).argmax(-1)
    assert torch.equal(predicted[:, 3:], text[:, 4:])


@pytest.mark.parametrize("name", HYBRIDS)
def test_a_hybrid_caches_keys_for_attending_layers_and_a_recurrent_state_for_the_others(name):
    model = make(name).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, V, (1, 5)), cache)
    assert cache.capacity == model.block_size
    assert [type(state) for state in cache.states] == [RecurrentState if mixer.kind is Kind.FLAT else KVState
                                                       for mixer in model.mixers()]
    assert cache.nbytes() == model.state_bytes()


def test_the_layer_pattern_cycles_over_the_layers_and_each_name_builds_its_mixer():
    """Every mixer of the presets in one pattern (with the settings a tiny preset gives it), cycled over one layer
    more than its length."""
    names = list(SETTINGS)
    model = dataclasses.replace(tiny_config("gpt_rope"), n_layer=len(names) + 1, layer_pattern=names,
                                mixers=SETTINGS).build()
    assert [model.config.mixer(i) for i in range(len(names) + 1)] == names + names[:1]
    assert [type(mixer) for mixer in model.mixers()[:len(names)]] == [MIXERS[name] for name in names]


# A recurrent-only preset's sizing may pick its mixers' head width too (Mamba-2's): a longer search.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in ONLY_RECURRENT else name
                                  for name in RECURRENT])
def test_target_params_sizes_recurrent_models(name):
    config = dataclasses.replace(tiny_config(name), target_params=200_000)
    with torch.device("meta"):
        active = sized(config).build().parameter_counts().active
    assert abs(active - 200_000) <= 0.05 * 200_000


@pytest.mark.parametrize("mixer", [name for name, mixer in MIXERS.items() if hasattr(mixer.hf, "reference_layer")])
def test_a_layer_equals_the_transformers_layer_its_file_names_with_and_without_its_cache(mixer):
    """Gated DeltaNet's equals OLMo-Hybrid's layer, which holds the same weights under the same names."""
    pytest.importorskip("transformers")
    name = next(name for name in RECURRENT if tiny_config(name).layer_pattern == [mixer])
    model = make(name).eval()
    ours, dim = model.mixers()[0], model.config.n_embd
    theirs, their_cache = MIXERS[mixer].hf.reference_layer(ours, dim)
    x = torch.randn(2, 11, dim)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)
        cache, mine = their_cache(), model.new_cache()
        for piece in (x[:, :6], x[:, 6:7], x[:, 7:8]):
            torch.testing.assert_close(theirs(piece, cache=cache), ours(piece, mine, 0), atol=1e-5, rtol=0)
            mine.advance(piece.size(1))


@pytest.mark.parametrize("name", RECURRENT)
def test_the_recurrence_keeps_float32_under_bf16_autocast(name):
    """A state summed over many tokens would lose its small updates in bf16; the layers still run under autocast."""
    model = make(name).eval()
    cache = model.new_cache()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        for piece in torch.randint(0, V, (1, 10)).split([9, 1], dim=1):
            assert model(piece, cache).logits.isfinite().all()
    recurrences = [layer for layer, mixer in enumerate(model.mixers()) if mixer.scan is not None]
    if not recurrences:
        pytest.skip(f"{name}'s flat states hold no recurrence, only a short convolution's last inputs")
    assert cache.states[recurrences[0]].recurrent.dtype == torch.float32
