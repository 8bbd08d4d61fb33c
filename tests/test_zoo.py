"""The model zoo: every preset of conf/model/ on the shared contract, and what makes each architecture different.

The tests of every preset take the list from conf/model/ (helpers.PRESETS) and shrink each preset to
helpers.TINY_WIDTH through its config's with_width: a new conf/model/NAME.yaml is tested with no edit here.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import (BLOCK, PRESETS, TINY_WIDTH, V, compose_train, compose_zoo, counted_flops_per_token, make,
                     tiny_config, tiny_overrides)
from torch import nn

from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.checkpoints.folder import save_folder
from lmzoo.cli.describe import describe
from lmzoo.data import CharTokenizer
from lmzoo.errors import UserError
from lmzoo.inference.sampling import SamplingSettings, generate
from lmzoo.models import LanguageModel, MLPConfig, preset_config
from lmzoo.models.presets import preset
from lmzoo.models.lora import LoRA, LoRALinear, matching_linears
from lmzoo.models.routing import MoE, Router
from lmzoo.training.plan import training_flops_per_token
from lmzoo.training.run import build, train

TINY_RUN = ["trainer=debug", "trainer.enable_progress_bar=false", "trainer.max_steps=4",
            "trainer.val_check_interval=4", "block_size=16", "sample_tokens=0"]
CHARS = "".join(chr(c) for c in range(ord("0"), ord("0") + V))
# What the zoo tests can afford to build and train in a few seconds per preset.
MOST_TINY_PARAMETERS = 1_000_000


def randomized(model: LanguageModel) -> LanguageModel:
    """`model` with every parameter moved off its init (the bigram starts at zeros), so that each position's
    logits depend on what it reads."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name", PRESETS)
def test_the_preset_has_what_the_zoo_tests_need(name):
    """The guard: a preset the zoo tests cannot build tiny fails here, saying what to add."""
    config = tiny_config(name)
    assert config is not None, (
        f"conf/model/{name}.yaml: {type(config).__name__}.with_width({TINY_WIDTH}) finds no valid config; the zoo "
        "tests shrink every preset to that width: make with_width return one (see TransformerConfig.with_width)")
    # The overrides that shrink it, typed on a command line as bench/gpu.py types its resized presets, are accepted.
    config.check_new(frozenset(override.split("=", 1)[0] for override in tiny_overrides(name)))
    model = config.build()
    assert isinstance(model, LanguageModel)
    total, _ = model.parameter_counts()
    assert total <= MOST_TINY_PARAMETERS, (
        f"conf/model/{name}.yaml at width {TINY_WIDTH} has {total:,} parameters; the zoo tests need at most "
        f"{MOST_TINY_PARAMETERS:,}: make its other sizes follow the width in with_width")
    assert model.block_size <= BLOCK
    assert model.eval()(torch.randint(0, V, (2, BLOCK))).logits.shape == (2, BLOCK, V)
    # Every parameter in exactly one group, a tied one once: Muon and weight decay read the groups.
    grouped = [id(p) for group in model.parameter_groups() for p in group]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


@pytest.mark.parametrize("name", PRESETS)
def test_a_token_changes_the_logits_of_the_positions_that_read_it_only(name):
    """Causal: never the positions before it, always its own, and none past the context the model reads (the
    bigram 1 token, the MLP `context`; a local layer's window narrows what it reaches further)."""
    model = randomized(make(name))
    idx = torch.randint(0, V, (1, BLOCK))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % V
    with torch.no_grad():
        differs = (model(idx).logits - model(changed).logits).abs().amax(dim=-1)[0] > 1e-6
    assert not differs[:10].any() and differs[10] and not differs[10 + model.block_size:].any()


@pytest.mark.parametrize("name", PRESETS)
def test_a_few_steps_on_one_batch_drive_the_loss_down(name):
    model = make(name).train()
    batch = torch.randint(0, V, (4, BLOCK + 1))
    x, y = batch[:, :-1], batch[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2 if model.parameter_groups().hidden == [] else 1e-2)
    losses = []
    for _ in range(20):
        output = model(x)
        loss = F.cross_entropy(output.logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        (loss if output.aux_loss is None else loss + output.aux_loss).backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("name", PRESETS)
def test_greedy_decoding_with_the_cache_equals_without(name):
    model = randomized(make(name))
    prompt = torch.randint(0, V, (2, 4))
    cached = torch.stack(list(generate(model, prompt, SamplingSettings(max_new_tokens=BLOCK - 4, temperature=0))), 1)
    uncached = torch.stack(list(generate(model, prompt, SamplingSettings(max_new_tokens=BLOCK - 4, temperature=0,
                                                                         kv_cache=False))), dim=1)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", PRESETS)
def test_past_the_context_the_sliding_cache_gives_the_text_of_its_window(name):
    """Greedy text past block_size: each character is what the uncached model predicts from the window the
    cache holds. The cache fills to block_size tokens, then restarts from the last block_size // 2."""
    model, tokenizer = randomized(make(name)), CharTokenizer(CHARS)
    cache = model.new_cache()
    if cache is None or cache.capacity is None:
        pytest.skip(f"{name} keeps no cache that fills: it recomputes its context, or its state does not grow")
    prompt = tokenizer.encode("0123")
    new = 2 * model.block_size
    text = tokenizer.decode(torch.cat(list(generate(model, [prompt], SamplingSettings(max_new_tokens=new,
                                                                                       temperature=0)))).tolist())
    context, start, window = list(prompt), 0, model.block_size
    with torch.no_grad():
        for _ in range(new):
            if len(context) - start > window:
                start = len(context) - window // 2
            logits = model(torch.tensor([context[start:]])).logits[0, -1]
            context.append(int(logits.argmax()))
    assert len(text) == new and text == tokenizer.decode(context[len(prompt):])


@pytest.mark.parametrize("name", PRESETS)
def test_flops_per_token_equal_pytorchs_flop_counter(name):
    # No capacity limit in the presets: every token reaches its top_k experts, as the count assumes.
    model = make(name)
    context = BLOCK
    counted = counted_flops_per_token(model, torch.randint(0, V, (3, context)))
    if counted == 0:
        pytest.skip(f"{name} does no matrix product for PyTorch to count (see test_bigram_counts_the_row_a_token_reads)")
    assert model.flops_per_token(context) == counted
    # Models that read the whole window count their mixing at the run's context; fixed-context ones read their own.
    longer = model.flops_per_token(2 * context)
    assert longer > model.flops_per_token(context) if model.block_size == BLOCK else longer == counted


@pytest.mark.parametrize("name", PRESETS)
def test_logits_at_the_scored_positions_alone_are_the_whole_sequences_there_and_cost_their_share(name):
    """A synthetic task scores its answers alone (forward's only_at): their logits are those the whole sequence's
    forward gives there, and a run is charged the position-wise part at the share scored, PyTorch's count of such
    a step (the bigram, which does no product PyTorch counts, its nominal count at that share)."""
    model = randomized(make(name))
    idx = torch.randint(0, V, (3, BLOCK))
    scored = torch.zeros(3, BLOCK, dtype=torch.bool)
    scored[:, 1::4] = True
    with torch.no_grad():
        torch.testing.assert_close(model(idx, only_at=scored).logits, model(idx).logits[scored])
    counted = counted_flops_per_token(model, idx, scored) or model.flops_per_token(BLOCK) / 4
    assert training_flops_per_token(model, BLOCK, scored_share=0.25) == counted < model.flops_per_token(BLOCK)


def test_bigram_counts_the_row_a_token_reads():
    """Its lookup does no matrix product, so PyTorch counts nothing; lmzoo counts a multiply-add per logit."""
    model = make("bigram")
    assert counted_flops_per_token(model, torch.randint(0, V, (3, BLOCK))) == 0
    assert model.flops_per_token(BLOCK) == 3 * 2 * V


@pytest.mark.parametrize("name", PRESETS)
def test_each_lora_target_adapts_linears_and_the_adapted_model_starts_as_its_base(name):
    model = randomized(make(name))
    declared = model.lora_targets
    if not declared:
        with pytest.raises(UserError, match="^LoRA target 'qkv' matches no layer of .*; LoRA cannot adapt it$"):
            LoRA(targets=["qkv"]).apply(model)
        return
    # A target may match nothing in a preset's options (Mamba-2's blocks have no MLP); the others adapt linears.
    present = [target for target, patterns in sorted(declared.items()) if matching_linears(model, patterns)]
    assert present
    idx = torch.randint(0, V, (2, BLOCK))
    with torch.no_grad():
        before = model(idx).logits
        LoRA(r=2, alpha=4, targets=present).apply(model)
        assert torch.equal(model(idx).logits, before)
    adapted = [m for m in model.modules() if isinstance(m, LoRALinear)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert adapted and len(trainable) == 2 * len(adapted)


@pytest.mark.parametrize("name", PRESETS)
def test_export_writes_a_model_that_gives_the_same_logits(tmp_path, name):
    """To its transformers class where it has one, else to lmzoo's own safetensors; lmzoo loads either back."""
    model = randomized(make(name))
    spec = {"kind": "char", "chars": CHARS}
    save_folder(model, spec, tmp_path / "source")
    message = export_checkpoint(str(tmp_path / "source"), str(tmp_path / "out"))
    idx = torch.randint(0, V, (2, BLOCK))
    reloaded, tokenizer, _ = load_model(tmp_path / "out")
    assert type(reloaded) is type(model) and reloaded.config == model.config and tokenizer.spec == spec
    with torch.no_grad():
        expected, again = model(idx).logits, reloaded(idx).logits
    # "Transformer in these options has no transformers class" where other options of its class have one: lmzoo's
    # own weights, the same bits back.
    if message.startswith(type(model).__name__) and "has no transformers class" in message:
        assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.safetensors", "lmzoo.json"}
        assert torch.equal(again, expected)
        return
    # A transformers class may hold a weight of lmzoo's folded into another (differential attention's norm scale in
    # DiffLlama's output projection), which rounds otherwise.
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=0)
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert message.startswith(f"wrote {type(hf_model).__name__} ")
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", PRESETS)
def test_describe_gives_the_card_and_each_layers_parts(tmp_path, name):
    """`python -m lmzoo.describe` on a saved model: its card, its own lines (each layer's mixer by the name the
    pattern gives it), and the recorded config, which builds the same model."""
    model = make(name)
    save_folder(model, {"kind": "char", "chars": CHARS}, tmp_path / "model")
    text = describe(str(tmp_path / "model"))
    assert text.startswith(type(model).__name__) and "\n".join(model.describe()) in text
    assert all(mixer in text for mixer in getattr(model.config, "layer_pattern", []))
    assert load_model(tmp_path / "model")[0].config == model.config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data folder for the zoo's runs: tinyshakespeare is prepared once."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("name", PRESETS)
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, data_dir, name):
    """Model, optimizer, schedule, RNG and data stream come back with the checkpoint (BatchNorm's statistics and the
    routers too); the last checkpoint loads as the trained model, and the run logs its parameters and routers."""
    common = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=2",
              "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='step{step}'",
              f"paths.data_dir={data_dir}"]
    cfg = compose_zoo(tmp_path / "straight", name, *common)
    datamodule, lit, trainer = build(cfg)
    trainer.fit(lit, datamodule=datamodule)
    checkpoints = tmp_path / "straight" / "run" / "checkpoints"
    resumed = cfg.copy()
    resumed.paths.output_dir, resumed.ckpt_path = str(tmp_path / "resumed" / "run"), str(checkpoints / "step2.ckpt")
    train(resumed)
    expected = read_checkpoint(checkpoints / "last.ckpt")["state_dict"]
    actual = read_checkpoint(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    assert expected.keys() == actual.keys() and all(torch.equal(actual[k], v) for k, v in expected.items())

    loaded, _, _ = load_model(checkpoints / "last.ckpt")
    idx = torch.randint(0, datamodule.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(lit.model.eval()(idx).logits, loaded(idx).logits)
        output = lit.model.train()(idx)
    # A routed model logs its auxiliary loss and each router's expert load.
    assert {f"experts/{router}/0" for router in output.expert_load} <= set(trainer.logged_metrics)
    assert (output.aux_loss is None) != ("train/aux_loss" in trainer.logged_metrics)
    hparams = (tmp_path / "straight" / "run" / "tensorboard" / "hparams.yaml").read_text()
    total, active = lit.model.parameter_counts()
    assert f"parameters: {total}" in hparams and f"active_parameters: {active}" in hparams


def test_mlp_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    model = make("mlp")
    idx = torch.randint(0, V, (4, 8))
    model.train()
    alone, together = model(idx[:2]).logits, model(idx).logits
    assert not torch.allclose(alone, together[:2])
    model.eval()
    assert torch.allclose(model(idx[:2]).logits, model(idx).logits[:2])
    assert all(bn.num_batches_tracked.item() == 2 for bn in model.modules() if isinstance(bn, nn.BatchNorm1d))


def test_mlp_hidden_widths_shrink_geometrically():
    model = MLPConfig(vocab_size=V, context=3, n_embd=4, hidden=16, n_hidden=3, activation="gelu").build()
    linears = [m for m in model.hidden.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 64), (64, 32), (32, 16)]


def test_mlp_permutation_codes_are_distinct_half_ones_and_seeded():
    config = MLPConfig(vocab_size=V, context=3, n_embd=4, hidden=16, input_encoding="permutation", code_bits=8)
    model = config.build()
    codes = model.codes[:V]
    assert codes.shape == (V, 8) and (codes.sum(dim=1) == 4).all() and len({tuple(c) for c in codes.tolist()}) == V
    # The padding token before a window's start is all zeros, which no token's code is.
    assert not model.codes[V].any()
    assert torch.equal(config.build().codes, model.codes)
    assert model.hidden[0][0].in_features == 3 * 8 and not hasattr(model, "wte")
    # C(8, 4) = 70 codes fit a vocabulary of 70; C(7, 3) = 35 do not.
    with pytest.raises(UserError, match=r"^model.code_bits gives only C\(7, 3\) = 35 codes for a vocabulary of 70; "
                                        r"use code_bits=8 or more, got 7$"):
        MLPConfig(vocab_size=V, input_encoding="permutation", code_bits=7)


def test_mlp_permutation_codes_come_back_from_the_checkpoint(tmp_path):
    cfg = compose_train(tmp_path, "model=mlp", *TINY_RUN, *tiny_overrides("mlp"), "model.input_encoding=permutation",
                        tiny=False)
    datamodule, lit, trainer = build(cfg)
    trainer.fit(lit, datamodule=datamodule)
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    assert torch.equal(checkpoint["state_dict"]["model.codes"], lit.model.codes)
    # Codes other than a fresh model would draw: the loaded model takes the checkpoint's.
    checkpoint["state_dict"]["model.codes"] = checkpoint["state_dict"]["model.codes"].flip(0)
    torch.save(checkpoint, path)
    loaded, _, _ = load_model(path)
    assert torch.equal(loaded.codes, lit.model.codes.flip(0))


@pytest.mark.parametrize("n_layer, gqa_groups, widths", [
    (4, 1, [(2, 2, 64), (3, 3, 224), (3, 3, 352), (4, 4, 512)]),
    (3, 2, [(2, 1, 64), (4, 2, 288), (4, 2, 512)]),
])
def test_block_scaling_widths_follow_openelm(n_layer, gqa_groups, widths):
    """Heads of 32 at width 128: query widths 0.5 to 1.0 x 128 in multiples of 32 x gqa_groups, FFN widths 0.5 to
    4.0 x 128 in multiples of 32, as OpenELM rounds them; the summary gives each layer's."""
    attention = preset("block_scaling").settings["mixers"]
    model = preset_config("block_scaling", vocab_size=V, block_size=16, n_layer=n_layer,
                          mixers={name: dict(gqa_groups=gqa_groups) for name in attention}).build()
    assert [(b.attn.n_head, b.attn.n_kv_head, b.mlp.c_proj.in_features) for b in model.transformer.h] == widths
    described = model.describe()
    assert all(f"layer {layer}: " in line and f"({q} heads, {kv} key/value heads" in line and f"({ffn} wide," in line
               for layer, ((q, kv, ffn), line) in enumerate(zip(widths, described[1:])))


def expert_row_counts(moe: MoE) -> list[int]:
    counts = [0] * len(moe.experts)
    for index, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda module, args, out, i=index: counts.__setitem__(i, counts[i] + len(args[0])))
    return counts


def test_moe_sends_each_token_to_top_k_experts_and_computes_only_those():
    torch.manual_seed(0)
    moe = MoE("0.mlp", 16, 32, n_experts=4, top_k=2)
    x = torch.randn(3, 10, 16)
    counts = expert_row_counts(moe)
    out = moe(x)
    weights, experts, _, _ = moe.router(x.reshape(-1, 16))
    assert experts.shape == (30, 2) and all(len(set(row)) == 2 for row in experts.tolist())
    assert counts == torch.bincount(experts.flatten(), minlength=4).tolist() and sum(counts) == 60
    expected = torch.stack([
        sum(w * moe.experts[e](token) for w, e in zip(token_weights, token_experts.tolist()))
        for token, token_weights, token_experts in zip(x.reshape(-1, 16), weights, experts)
    ])
    assert torch.allclose(out.reshape(-1, 16), expected, atol=1e-6)


def test_moe_capacity_caps_the_tokens_of_each_expert():
    torch.manual_seed(0)
    moe = MoE("0.mlp", 16, 32, n_experts=4, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        moe.router.gate.weight[0] += 5.0  # most tokens prefer expert 0
    counts = expert_row_counts(moe)
    moe(torch.randn(40, 16).abs())
    assert max(counts) == 10


@pytest.mark.parametrize("name", ["moe", "moa_moe"])
def test_auxiliary_loss_reaches_every_router_in_training_only(name):
    model = make(name).train()
    output = model(torch.randint(0, V, (2, 16)))
    output.aux_loss.backward()
    routers = [m for m in model.modules() if isinstance(m, Router)]
    assert len(routers) == len(output.expert_load) and all(r.gate.weight.grad.abs().sum() > 0 for r in routers)
    assert all(load.sum().item() == pytest.approx(1.0) for load in output.expert_load.values())
    evaluated = model.eval()(torch.randint(0, V, (2, 16)))
    assert evaluated.aux_loss is None and evaluated.expert_load == {}


def test_load_balancing_spreads_a_collapsed_router_over_every_expert():
    torch.manual_seed(0)
    router = Router(16, n_experts=4, top_k=1, balance_weight=1.0, z_weight=0.0)
    x = torch.randn(256, 16)
    x[:, 0] = 1.0  # a constant feature, through which expert 0 is favoured for every token
    with torch.no_grad():
        router.gate.weight[0, 0] = 5.0
    assert router(x).load[0] > 0.9
    optimizer = torch.optim.Adam(router.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        router(x).aux_loss.backward()
        optimizer.step()
    assert (router(x).load > 0.1).all()


def test_sparse_models_count_active_parameters():
    model = make("moe")
    c, experts = model.config, model.config.ffns[MoE.name]
    total, active = model.parameter_counts()
    per_expert = sum(p.numel() for p in model.transformer.h[0].mlp.experts[0].parameters())
    assert total == sum(p.numel() for p in model.parameters())
    assert total - active == c.n_layer * (experts.n_experts - experts.top_k) * per_expert
    assert make("gpt").parameter_counts().total == make("gpt").parameter_counts().active


