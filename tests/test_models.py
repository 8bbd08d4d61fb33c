"""The transformer's shared pieces: the KV cache, init, parameter groups, names, optimizer groups and schedule
(causality and decoding of every preset: tests/test_zoo.py)."""

import math

import pytest
import torch

from lmzoo.inference.sampling import SamplingSettings, sample_next
from torch import nn

from lmzoo.models import Transformer, TransformerConfig, preset_config
from lmzoo.models.base import Sublayer
from lmzoo.models.blocks import MLP, Attention
from lmzoo.training.optim import OptimConfig, Schedule, configure_adamw

SHAPE = dict(vocab_size=70, block_size=24, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
ARCHITECTURES = {
    "gpt": lambda: preset_config("gpt", **SHAPE, tie_embeddings=True, init="gpt2"),
    "gpt_rope": lambda: TransformerConfig(**SHAPE),
    "gpt_rope_gqa": lambda: TransformerConfig(**{**SHAPE, "n_head": 4, "dropout": 0.0},
                                              mixers={Attention.name: dict(n_kv_head=2)}),
}


@pytest.fixture(params=sorted(ARCHITECTURES))
def model(request):
    torch.manual_seed(0)
    return ARCHITECTURES[request.param]().build().eval()


def test_forward_gives_logits_over_the_true_vocabulary(model):
    logits = model(torch.randint(0, 70, (3, 24))).logits
    assert logits.shape == (3, 24, 70)
    assert model.lm_head.weight.shape[0] == 128


def test_cached_logits_equal_uncached_and_the_model_advances_the_cache(model):
    idx = torch.randint(0, 70, (2, 20))
    full = model(idx).logits
    cache = model.new_cache()
    stepped = [model(idx[:, :8], cache).logits]
    assert cache.position == 8
    stepped += [model(idx[:, t : t + 1], cache).logits for t in range(8, 20)]
    assert cache.position == 20
    assert torch.allclose(torch.cat(stepped, dim=1), full, atol=1e-5)


def test_top_k_samples_only_the_k_most_likely():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    generator = torch.Generator().manual_seed(0)
    drawn = {sample_next(logits, SamplingSettings(top_k=2), generator).item() for _ in range(200)}
    assert drawn == {1, 2}
    assert sample_next(logits, SamplingSettings(temperature=0)).item() == 1


@pytest.mark.parametrize("init, residual_std, mlp_in_std", [
    ("gpt2", 0.02 / 4, 0.02), ("plain", 0.02, 0.02), ("unit_mlp", 0.02 / 4, 1 / 16),
])
def test_init_sets_the_residual_projections_and_the_mlp_input(init, residual_std, mlp_in_std):
    """Width 256, 8 layers: GPT-2 scales the residual projections by 1/sqrt(16); unit_mlp draws c_fc at 1/sqrt(256)."""
    torch.manual_seed(0)
    model = preset_config("gpt", vocab_size=64, block_size=16, n_layer=8, n_head=4, n_embd=256, init=init,
                          tie_embeddings=True).build()
    for projection in (model.transformer.h[0].attn.c_proj, model.transformer.h[7].mlp.c_proj):
        assert projection.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(mlp_in_std, rel=0.05)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("ffn_pattern, branches", [(["mlp"], 16), ([], 8)])
def test_gpt2_init_scales_the_residual_outputs_by_the_branches_of_the_residual_stream(ffn_pattern, branches):
    """8 layers: 16 residual branches with a feed-forward part after each mixer, 8 with the mixers alone."""
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=64, block_size=16, n_layer=8, n_embd=256, ffn_pattern=ffn_pattern).build()
    outputs = torch.cat([block.attn.c_proj.weight.flatten() for block in model.transformer.h])
    assert outputs.std().item() == pytest.approx(0.02 / math.sqrt(branches), rel=0.02)


class Squared(Sublayer):
    """A feed-forward layer of other names than MLP's, declaring its own roles."""

    def __init__(self, dim: int):
        super().__init__()
        self.widen, self.narrow = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x, routing=None):
        return self.narrow(self.widen(x).relu().square())

    def residual_outputs(self):
        return [self.narrow]

    def mlp_inputs(self):
        return [self.widen]


class SquaredReLU(Transformer):
    def feed_forward(self, layer):
        return Squared(self.config.n_embd)


def test_init_reads_the_roles_a_layer_declares_not_its_names():
    torch.manual_seed(0)
    model = SquaredReLU(TransformerConfig(vocab_size=64, block_size=16, n_layer=8, n_head=4, n_embd=256,
                                          init="unit_mlp"))
    assert model.transformer.h[3].mlp.narrow.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.transformer.h[3].mlp.widen.weight.std().item() == pytest.approx(1 / 16, rel=0.05)


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_groups_hold_the_embeddings_the_head_the_hidden_matrices_and_the_rest(tied):
    model = preset_config("gpt", vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, tie_embeddings=tied).build()
    groups = {role: {name for name, p in model.named_parameters() if any(p is q for q in group)}
              for role, group in model.parameter_groups()._asdict().items()}
    # A tied head is the embedding's matrix: it counts once, as an embedding.
    assert groups["embeddings"] == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert groups["head"] == (set() if tied else {"lm_head.weight"})
    assert groups["hidden"] == {f"transformer.h.0.{name}.weight" for name in ("attn.c_attn", "attn.c_proj",
                                                                                "mlp.c_fc", "mlp.c_proj")}
    assert all(name.endswith("bias") or ".ln_" in name for name in groups["other"])
    assert sum(map(len, groups.values())) == len(list(model.parameters()))


def test_gpt_parameter_names_follow_hugging_face_gpt2():
    config = preset_config("gpt", vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    names = set(config.build().state_dict())
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
            "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
            "transformer.h.0.attn.c_proj.weight", "transformer.h.0.mlp.c_fc.weight",
            "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.ln_2.bias", "transformer.ln_f.weight",
            "lm_head.weight"} <= names


def test_gpt_rope_has_no_biases_and_no_learned_positions():
    model = TransformerConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16).build()
    names = set(model.state_dict())
    assert not any(name.endswith("bias") for name in names)
    assert "transformer.wpe.weight" not in names


def test_weight_decay_applies_to_matrices_only():
    model = TransformerConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16).build()
    decay, no_decay = configure_adamw(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))["optimizer"].param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_learning_rate_warms_up_then_decays_to_the_floor():
    schedule = Schedule.of(OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110))
    assert schedule(0) == pytest.approx(1 / 11)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)
    assert schedule(110) == schedule(500) == pytest.approx(0.1)
    assert all(schedule(s) >= schedule(s + 1) for s in range(10, 120))


@pytest.mark.parametrize("steps", [30, 2000])
def test_warmup_and_wsds_decay_are_fractions_of_the_run(steps):
    """5% warmup and wsd's last 20% decay at any length: 30 steps warm up for 2, 2000 for 100."""
    cosine = Schedule.of(OptimConfig(lr=1e-3, min_lr=1e-4, decay_steps=steps))
    assert cosine.warmup == round(0.05 * steps) and cosine(cosine.warmup) == pytest.approx(1.0)
    wsd = Schedule.of(OptimConfig(lr=1e-3, min_lr=1e-4, decay_steps=steps, schedule="wsd"))
    stable_until = steps - round(0.2 * steps)
    assert wsd.warmup == cosine.warmup and wsd(wsd.warmup) == wsd(stable_until) == 1.0
    # A straight line from lr at the decay's start to min_lr at the run's end.
    middle = (stable_until + steps) // 2
    assert wsd(middle) == pytest.approx(0.1 + 0.9 * (steps - middle) / (steps - stable_until))
    assert wsd(steps) == wsd(steps + 10) == pytest.approx(0.1) and wsd(steps - 1) > wsd(steps)
    # An absolute warmup stays as given.
    assert Schedule.of(OptimConfig(decay_steps=steps, warmup_steps=7)).warmup == 7


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_the_mlps_dropout_acts_in_training_only_and_only_when_set(dropout):
    torch.manual_seed(0)
    mlp = MLP(32, 64, dropout=dropout).train()
    x = torch.randn(2, 16, 32)
    assert torch.equal(mlp(x), mlp(x)) == (dropout == 0)
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))
