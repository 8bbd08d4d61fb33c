"""The model zoo: every architecture on the shared contract, and what makes each one different."""

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION, TINY_WIDTHS, V, ZOO, compose_train, make
from torch import nn

from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.data import CharTokenizer
from lmzoo.errors import UserError
from lmzoo.inference.sampling import SamplingSettings, generate
from lmzoo.models import BlockScalingConfig, MLPConfig, MoAMoE, MoETransformer
from lmzoo.models.block_scaling import layer_widths
from lmzoo.models.routing import MoE, Router
from lmzoo.training.run import build, train

TINY_RUN = ["trainer=debug", "trainer.enable_progress_bar=false", "trainer.max_steps=4",
            "trainer.val_check_interval=4", "block_size=16", "sample_tokens=0"]


@pytest.mark.parametrize("name", ZOO)
def test_forward_gives_logits_for_every_position(name):
    model = make(name).eval()
    assert model(torch.randint(0, V, (3, 24))).logits.shape == (3, 24, V)


@pytest.mark.parametrize("name", ZOO)
def test_a_few_steps_on_one_batch_drive_the_loss_down(name):
    model = make(name).train()
    batch = torch.randint(0, V, (4, 25))
    x, y = batch[:, :-1], batch[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2 if name == "bigram" else 1e-2)
    losses = []
    for _ in range(30):
        output = model(x)
        loss = F.cross_entropy(output.logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        (loss if output.aux_loss is None else loss + output.aux_loss).backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.5


@pytest.mark.parametrize("name", ZOO)
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, name):
    cfg = compose_train(tmp_path, f"model={name}", *TINY_RUN, *TINY_WIDTHS.get(name, []),
                        "trainer.log_every_n_steps=2", tiny=False)
    datamodule, lit, trainer = build(cfg)
    trainer.fit(lit, datamodule=datamodule)
    if isinstance(lit.model, MoETransformer):
        assert {"train/aux_loss", "experts/0.mlp/0"} <= set(trainer.logged_metrics)
    if isinstance(lit.model, MoAMoE):
        assert "experts/0.attn/0" in trainer.logged_metrics
    loaded, tokenizer, _ = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    idx = torch.randint(0, datamodule.vocab_size, (2, 16))
    assert torch.equal(lit.model.eval()(idx).logits, loaded(idx).logits)
    hparams = (tmp_path / "run" / "tensorboard" / "hparams.yaml").read_text()
    total, active = lit.model.parameter_counts()
    assert f"parameters: {total}" in hparams and f"active_parameters: {active}" in hparams


@pytest.mark.parametrize("name", ATTENTION)
def test_greedy_decoding_with_the_cache_equals_without(name):
    model = make(name).eval()
    prompt = torch.randint(0, V, (2, 4))
    cached = torch.stack(list(generate(model, prompt, SamplingSettings(max_new_tokens=20, temperature=0))), dim=1)
    uncached = torch.stack(list(generate(model, prompt, SamplingSettings(max_new_tokens=20, temperature=0,
                                                                         kv_cache=False))), dim=1)
    assert torch.equal(cached, uncached)


CHARS = "".join(chr(c) for c in range(ord("0"), ord("0") + V))


@pytest.mark.parametrize("name", ATTENTION)
def test_past_the_context_the_sliding_cache_gives_the_text_of_its_window(name):
    """Greedy text past block_size: each character is what the uncached model predicts from the window the
    cache holds. The cache fills to block_size tokens, then restarts from the last block_size // 2."""
    model, tokenizer = make(name).eval(), CharTokenizer(CHARS)
    prompt = tokenizer.encode("0123")
    new = 3 * model.block_size
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


@pytest.mark.parametrize("name, context", [("bigram", 1), ("mlp", 4)])
def test_fixed_context_models_read_only_their_context(name, context):
    model = make(name).eval()
    assert model.block_size == context
    if name == "bigram":
        nn.init.normal_(model.logits.weight)  # it starts from uniform predictions
    idx = torch.randint(0, V, (1, 12))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % V
    differs = (model(idx).logits - model(changed).logits).abs().amax(dim=-1)[0] > 0
    assert differs.tolist() == [5 <= t < 5 + context for t in range(12)]


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
    cfg = compose_train(tmp_path, "model=mlp", *TINY_RUN, *TINY_WIDTHS["mlp"], "model.input_encoding=permutation",
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


def test_block_scaling_widths_follow_openelm():
    assert layer_widths(4, 128, 32, (0.5, 1.0), (0.5, 4.0)) == [(2, 2, 64), (3, 3, 224), (3, 3, 352), (4, 4, 512)]
    assert layer_widths(3, 128, 32, (0.5, 1.0), (0.5, 4.0), gqa_groups=2) == [(2, 1, 64), (4, 2, 288), (4, 2, 512)]
    model = BlockScalingConfig(vocab_size=V, block_size=16, n_layer=4, n_embd=128, head_dim=32).build()
    built = [(b.attn.n_head, b.attn.n_kv_head, b.mlp.c_proj.in_features) for b in model.transformer.h]
    assert built == layer_widths(4, 128, 32, (0.5, 1.0), (0.5, 4.0))
    assert "    1       3        3       224" in model.describe()


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
    total, active = model.parameter_counts()
    per_expert = sum(p.numel() for p in model.transformer.h[0].mlp.experts[0].parameters())
    assert total == sum(p.numel() for p in model.parameters())
    assert total - active == 2 * (4 - 2) * per_expert
    assert make("gpt").parameter_counts().total == make("gpt").parameter_counts().active


@pytest.mark.parametrize("name", ["mlp", "moa_moe", "diff_attn"])
def test_resumed_run_ends_with_the_same_weights(tmp_path, name):
    """BatchNorm's running statistics, the routers and differential attention's lambdas come back with the
    checkpoint."""
    common = [f"model={name}", *TINY_RUN, *TINY_WIDTHS[name], "trainer.max_steps=6", "trainer.val_check_interval=3",
              "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='step{step}'"]
    train(compose_train(tmp_path / "straight", *common, tiny=False))
    halfway = tmp_path / "straight" / "run" / "checkpoints" / "step3.ckpt"
    train(compose_train(tmp_path / "resumed", *common, f"ckpt_path={halfway}", tiny=False))
    expected, actual = (read_checkpoint(tmp_path / run / "run" / "checkpoints" / "last.ckpt")["state_dict"]
                        for run in ("straight", "resumed"))
    assert expected.keys() == actual.keys()
    assert all(torch.equal(actual[key], tensor) for key, tensor in expected.items())
