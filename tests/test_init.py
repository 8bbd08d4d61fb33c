"""Each part initialised as its authors' code does, beside the shared init of tests/test_models.py: the sequence
mixers name the reference file in their reference_init. (The one test file that names mixers: what it checks is
each one's own reference.)"""

import math

import pytest
import torch
from helpers import V

from lmzoo.models import TransformerConfig
from lmzoo.models.gated_deltanet import GatedDeltaNet
from lmzoo.models.mamba2 import Mamba2

WIDTH = 256


def kaiming_std(fan_in: int) -> float:
    """The std of nn.Linear's own init: uniform in +-1/sqrt(fan_in)."""
    return 1 / math.sqrt(3 * fan_in)


@pytest.mark.parametrize("ffn_pattern, branches", [([], 1), (["mlp"], 2)])
def test_mamba2_as_mamba_ssm_initialises_it(ffn_pattern, branches):
    """mamba_ssm: A uniform in (1, 16); in_proj at nn.Linear's init; out_proj too, over sqrt(residual branches),
    one per layer in blocks of the mixer alone; the convolution at nn.Conv1d's."""
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=V, block_size=16, n_layer=8, n_embd=WIDTH, layer_pattern=[Mamba2.name],
                              ffn_pattern=ffn_pattern, mixers={Mamba2.name: dict(head_dim=16)}).build()
    mixers = model.mixers()
    decay = torch.cat([mixer.A_log.exp() for mixer in mixers])
    assert decay.min() > 1 and decay.max() < 16 and decay.std() > 3
    in_proj = torch.cat([mixer.in_proj.weight.flatten() for mixer in mixers])
    out_proj = torch.cat([mixer.c_proj.weight.flatten() for mixer in mixers])
    assert in_proj.std().item() == pytest.approx(kaiming_std(WIDTH), rel=0.02)
    assert in_proj.abs().max() <= 1 / math.sqrt(WIDTH)
    assert out_proj.std().item() == pytest.approx(kaiming_std(2 * WIDTH) / math.sqrt(branches * 8), rel=0.02)
    conv = mixers[0].conv1d
    assert conv.weight.std().item() == pytest.approx(kaiming_std(conv.kernel_size[0]), rel=0.25)


def test_gated_deltanet_as_flash_linear_attention_initialises_it():
    """fla: every linear and the short convolution at normal(0, 0.02), the output projection not scaled down."""
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=V, block_size=16, n_layer=8, n_head=4, n_embd=WIDTH,
                              layer_pattern=[GatedDeltaNet.name]).build()
    mixers = model.mixers()
    for name in ("conv1d", "c_attn", "c_proj", "g_proj"):
        weights = torch.cat([getattr(mixer, name).weight.flatten() for mixer in mixers])
        assert weights.std().item() == pytest.approx(0.02, rel=0.02), name
    # The MLPs after them keep lmzoo's scaled residual output.
    mlp = torch.cat([block.mlp.c_proj.weight.flatten() for block in model.transformer.h])
    assert mlp.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.02)
