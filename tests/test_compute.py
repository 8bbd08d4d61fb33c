"""Comparisons at equal compute: FLOPs per token, budgets, models sized to a parameter count, and Muon."""

import pytest
import torch
import torch.nn.functional as F
from helpers import V, ZOO, make
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def counted_flops_per_token(model, tokens: torch.Tensor) -> float:
    """PyTorch's count of one training step's FLOPs (forward and backward), per token. Attention runs on SDPA's
    math backend, the one FlopCounterMode has formulas for on CPU."""
    model.train()
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        output = model(tokens)
        loss = F.cross_entropy(output.logits.flatten(0, 1), tokens.flatten())
        (loss if output.aux_loss is None else loss + output.aux_loss).backward()
    return counter.get_total_flops() / tokens.numel()


@pytest.mark.parametrize("name", [name for name in ZOO if name != "bigram"])
def test_flops_per_token_match_pytorchs_flop_counter(name):
    # No capacity limit: every token reaches its top_k experts, as the count assumes.
    model, context = make(name), 24
    counted = counted_flops_per_token(model, torch.randint(0, V, (3, context)))
    assert model.flops_per_token(context) == pytest.approx(counted, rel=0.1)
    # Attention models count their score and value products at the run's context; the MLP reads its own.
    longer = model.flops_per_token(2 * context)
    assert longer == model.flops_per_token(context) if name == "mlp" else longer > model.flops_per_token(context)


def test_sparse_models_count_only_the_experts_a_token_uses():
    """Twice the experts, the same top_k: only the routers, which score every expert, cost more."""
    fewer, config = make("moe"), ZOO["moe"]()
    config.n_experts *= 2
    more_router_weights = (config.n_experts // 2) * config.n_embd * config.n_layer
    assert config.build().flops_per_token(24) == fewer.flops_per_token(24) + 3 * 2 * more_router_weights


def test_bigram_counts_the_row_a_token_reads():
    """Its lookup does no matrix product, so PyTorch counts nothing; lmzoo counts a multiply-add per logit."""
    model = make("bigram")
    assert counted_flops_per_token(model, torch.randint(0, V, (3, 24))) == 0
    assert model.flops_per_token(24) == 3 * 2 * V
