"""Mamba-2's sequence mixer (Dao & Gu, "Transformers are SSMs", 2024): the state-space duality (SSD) layer.

Per head, with a scalar decay a_t = exp(dt_t * A) and a state S of (head_dim, state_size):
    S_t = a_t S_{t-1} + dt_t x_t B_t^T,    y_t = S_t C_t + D x_t.
Training runs the chunked form (`ssd_chunked`): quadratic attention-like products within each chunk, the state
passed from chunk to chunk; decoding runs the recurrence one token at a time (`ssd_step`). Around the scan: one
input projection to [z, x, B, C, dt], a short causal convolution over [x, B, C], B and C shared by groups of
heads, and a gated RMSNorm of y by z before the output projection. Parameter layout as Hugging Face's
Mamba2Mixer: a model whose every layer is this mixer, with no feed-forward layer, exports as Mamba2ForCausalLM
(`Mamba2HF`).
"""

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import FORWARD_AND_BACKWARD, Kind, PartSettings, SequenceMixer, near, require
from lmzoo.models.blocks import make_dropout
from lmzoo.models.cache import Cache
from lmzoo.models.hf_layout import HFLayout, Layout, joined, laid_out, load_into, same_names, trunk_names
from lmzoo.models.recurrent import (GatedRMSNorm, RecurrentState, Scan, ShortConv, chunks, decayed, initial_time_steps,
                                    leading_chunks, recur, softplus_inverse, unchunked)


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int,
                state: torch.Tensor | None = None, final_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y (batch, heads, T, head_dim) and the final state (batch, heads, head_dim, state_size) of the SSD
    recurrence over x (batch, heads, T, head_dim), time steps dt (batch, heads, T), decay rates A (heads,), and
    B, C (batch, groups, T, state_size), continuing from `state` (zeros when None); the final state None unless
    `final_state`. A zero state is neither read nor decayed, and the last chunk's update only made when kept.

    The products run in x's dtype, as mamba_ssm's kernels do (bf16 under autocast), the decays and the state in
    dt's (float32). Every product is batched over the chunks; only the state's decay from chunk to chunk is a loop.
    The heads of a group share their B and C, so C B^T is computed once a group, as mamba_ssm's _bmm_chunk_fwd
    does, and decayed per head: the heads' dimension is split into (groups, heads of a group), B and C's broadcast
    over the second."""
    dtype, dt, A = x.dtype, dt.float().contiguous(), A.float()
    T, head_dim = x.size(2), x.size(3)
    size = min(chunk, T)
    by_group = functools.partial(torch.unflatten, dim=1, sizes=(B.size(1), -1))
    dts, log_decay = chunks(dt, size), chunks(dt * A[:, None], size).cumsum(-1)  # log a_1 ... a_t in the chunk
    # dt first: its (batch, heads, T) layout lays the product out by head, where the batched products read it in
    # place (x arrives laid out as (batch, T, heads, head_dim), the input projection's).
    xs, Bs, Cs = chunks((dt[..., None] * x).to(dtype), size), chunks(B, size), chunks(C, size)
    # Within a chunk, token i reads token j <= i decayed by a_{j+1} ... a_i.
    (scores,) = decayed(by_group(log_decay), (Cs @ Bs.transpose(-1, -2))[:, :, None])
    y = scores.to(dtype) @ by_group(xs)  # (batch, groups, heads of a group, chunks, size, head_dim)
    count = xs.size(2)
    # The state each chunk's own tokens leave at its end (the last chunk's only when kept), then the state that
    # enters each chunk: its predecessor's decayed through it, plus what it wrote. Both products take a group's
    # heads side by side, (heads of a group x head_dim) rows against its B and C, one larger product for all.
    written = count if final_state else count - 1
    if written:
        log_written = leading_chunks(log_decay, written)
        to_end = (log_written[..., -1:] - log_written).exp() * leading_chunks(dts, written)
        # In x's own layout, where a group's heads are side by side already.
        weighted = by_group(leading_chunks(chunks(x, size), written) * to_end[..., None].to(dtype))
        writes = (weighted.permute(0, 1, 3, 2, 5, 4).flatten(3, 4) @ Bs[:, :, :written]).float()
        writes = writes.unflatten(3, (-1, head_dim))  # (batch, groups, chunks, heads of a group, head_dim, state)
        through = by_group(log_decay[..., -1].exp())[..., None, None]
    entering = [None if state is None else by_group(state)]
    for i in range(written):
        entering.append(writes[:, :, i] if entering[-1] is None else
                        torch.addcmul(writes[:, :, i], through[:, :, :, i], entering[-1]))
    # Chunks entered by a state read it, decayed since the chunk's start.
    first = 0 if state is not None else 1
    if count > first:
        read = torch.stack(entering[first:count], dim=2).to(dtype).flatten(3, 4)
        y_read = (Cs[:, :, first:] @ read.transpose(-1, -2)).unflatten(-1, (-1, head_dim))
        since = by_group(log_decay[:, :, first:]).exp().to(dtype).permute(0, 1, 3, 4, 2)[..., None]
        y = torch.cat((y[:, :, :, :first], y[:, :, :, first:] + (y_read * since).permute(0, 1, 4, 2, 3, 5)), dim=3)
    return unchunked(y.flatten(1, 2), T), entering[-1].flatten(1, 2) if final_state else None


def ssd_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence: x (batch, heads, head_dim), dt (batch, heads), B, C (batch, groups, state_size)."""
    B, C = per_head(B, x.size(1)), per_head(C, x.size(1))
    state = (dt * A).exp()[..., None, None] * state + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    return (state @ C[..., None]).squeeze(-1), state


def ssd_inputs(T: int, heads: int = 4, width: int = 4, state: int = 5):
    """Random inputs of the SSD scan: batch 2, heads of `width` in 2 groups of B and C, a state of `state`."""
    return (torch.randn(2, heads, T, width), torch.rand(2, heads, T), -2 * torch.rand(heads),
            torch.randn(2, 2, T, state), torch.randn(2, 2, T, state))


def per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """B or C of each group (dimension 1) repeated for its heads: head h reads group h // (heads per group)."""
    return t.repeat_interleave(heads // t.size(1), dim=1)


@functools.cache
def mamba_ssm_scan():
    """mamba_ssm's fused chunked scan, when it is installed (it runs on CUDA only); None otherwise."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined


def ssd_kernel(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int,
               state: torch.Tensor | None = None, final_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`ssd_chunked` by mamba_ssm's kernel, which takes the sequence before the heads."""
    y, final = mamba_ssm_scan()(*(t.transpose(1, 2).contiguous() for t in (x, dt)), A,
                                *(t.transpose(1, 2).contiguous() for t in (B, C)), chunk, initial_states=state,
                                return_final_states=True)
    return y.transpose(1, 2), final if final_state else None


def chunked_scan(x: torch.Tensor):
    """The chunked scan for x's device: mamba_ssm's kernel on CUDA where it is installed, else lmzoo's."""
    return ssd_kernel if x.is_cuda and mamba_ssm_scan() is not None else ssd_chunked


@dataclasses.dataclass(kw_only=True)
class Mamba2Settings(PartSettings):
    """Mamba-2's knobs: an inner width of expand * n_embd in heads of head_dim, a state of `state` per head channel,
    B and C shared by `groups` groups of heads, `conv_kernel` taps of the short causal convolution, and chunks of
    `chunk_size` tokens in the training scan."""

    state: int = 64
    expand: int = 2
    head_dim: int = 64
    groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 64

    former = {"ssm_state": "state", "ssm_expand": "expand", "ssm_head_dim": "head_dim", "ssm_groups": "groups",
              "conv_kernel": "conv_kernel", "chunk_size": "chunk_size"}

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        self.require_counts(key, "state", "expand", "head_dim", "groups", "conv_kernel", "chunk_size")
        inner = self.expand * trunk.n_embd
        require(inner % self.head_dim == 0 and (inner // self.head_dim) % self.groups == 0,
                f"{key}.head_dim must divide expand * n_embd ({inner}) into heads that model.{key}.groups divides",
                self.head_dim)

    def at_width(self, width: int) -> "Mamba2Settings | None":
        """Heads whose width, like attention's, stays within a factor 2 of the preset's."""
        inner = self.expand * width
        sizes = [d for d in range(2, inner + 1, 2)
                 if inner % d == 0 and (inner // d) % self.groups == 0 and near(d, self.head_dim)]
        return dataclasses.replace(self, head_dim=min(sizes, key=lambda d: abs(d - self.head_dim))) if sizes else None


class Mamba2(SequenceMixer, name="mamba2"):
    """Mamba-2's mixer: (B, T, dim) -> (B, T, dim), with the Attention's call signature."""

    Settings = Mamba2Settings
    kind = Kind.FLAT
    lora_targets = {"qkv": ("in_proj",), "proj": ("c_proj",)}
    scan = Scan(ssd_chunked, ssd_step, ssd_inputs, operands=(0, 3, 4), kernel=(mamba_ssm_scan, ssd_kernel, "mamba_ssm"))

    @classmethod
    def build(cls, trunk, settings: Mamba2Settings, layer: int, rotary) -> "Mamba2":
        return cls(trunk.n_embd, settings.state, settings.head_dim, settings.expand, settings.groups,
                   settings.conv_kernel, settings.chunk_size, trunk.dropout)

    def __init__(self, dim: int, state_size: int = 64, head_dim: int = 64, expand: int = 2, n_groups: int = 1,
                 conv_kernel: int = 4, chunk_size: int = 64, dropout: float = 0.0):
        super().__init__()
        self.inner = expand * dim
        self.n_head, self.head_dim, self.state_size = self.inner // head_dim, head_dim, state_size
        self.n_groups, self.chunk_size = n_groups, chunk_size
        conv_width = self.inner + 2 * n_groups * state_size
        self.in_proj = nn.Linear(dim, self.inner + conv_width + self.n_head, bias=False)
        self.conv1d = ShortConv(conv_width, conv_kernel, bias=True)
        self.dt_bias = nn.Parameter(softplus_inverse(initial_time_steps(self.n_head)))
        # A = -exp(A_log), the heads' decay rates drawn uniformly in (1, 16), as state-spaces/mamba's
        # mamba_ssm/modules/mamba2.py does (A_init_range).
        self.A_log = nn.Parameter(torch.empty(self.n_head).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(self.n_head))
        self.norm = GatedRMSNorm(self.inner, self.inner // n_groups, gate_first=True)
        self.c_proj = nn.Linear(self.inner, dim, bias=False)
        # On the mixer's output, as the Attention's.
        self.resid_dropout = make_dropout(dropout)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0, routing=None) -> torch.Tensor:
        batch, T, _ = x.shape
        groups = self.n_groups * self.state_size
        z, xbc, dt = self.in_proj(x).split([self.inner, self.inner + 2 * groups, self.n_head], dim=-1)
        state = cache.state(layer, RecurrentState) if cache is not None else None
        xs, B, C = F.silu(self.conv1d(xbc, state)).split([self.inner, groups, groups], dim=-1)
        xs = xs.view(batch, T, self.n_head, self.head_dim)
        B, C = (t.view(batch, T, self.n_groups, self.state_size).transpose(1, 2) for t in (B, C))
        dt = F.softplus(dt + self.dt_bias).transpose(1, 2)
        y = recur(ssd_step, chunked_scan(xs), (xs.transpose(1, 2), dt, -self.A_log.exp(), B, C), self.chunk_size,
                  state)
        # D x first, laid out as x (batch, T, heads, head_dim): the sum is then the norm's input as it is, no copy.
        y = (xs * self.D[:, None]).add_(y.transpose(1, 2)).flatten(2)
        return self.resid_dropout(self.c_proj(self.norm(y, z)))

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def reference_init(self, residual_scale: float) -> None:
        """As state-spaces/mamba does (mamba_ssm/models/mixer_seq_simple.py, `_init_weights`): the input projection
        at nn.Linear's own init, the output projection at it too, scaled by 1/sqrt(N) for the model's N residual
        branches (N = n_layer for its blocks of a mixer alone, where the reference counts 1 per layer; `residual_scale`,
        1 under init=plain); the convolution at nn.Conv1d's own init, which the shared init leaves."""
        self.in_proj.reset_parameters()
        self.c_proj.reset_parameters()
        with torch.no_grad():
            self.c_proj.weight.mul_(residual_scale)

    def mixing_flops(self, context: int) -> int:
        """Training FLOPs per token of the chunked scan's products over `context` tokens in chunks of
        min(chunk_size, context), the last one zero-padded: within each chunk C B^T, once a group of heads (which
        share B and C: the scan computes it once for them, as mamba_ssm does), and its decayed product with each
        head's x; per head, the incoming state's read by C in every chunk but the first, and the state's update in
        every chunk but the last (whose final state training does not keep); and the short convolution's taps."""
        size = min(self.chunk_size, context)
        count = -(-context // size)
        products = count * size * size * (self.n_groups * self.state_size + self.n_head * self.head_dim)
        products += 2 * (count - 1) * size * self.n_head * self.state_size * self.head_dim
        return round(FORWARD_AND_BACKWARD * 2 * products / context) + self.conv1d.flops_per_token()

    def state_numel(self, context: int) -> int:
        """Numbers a sequence's decoding state holds, whatever its length: the convolution's last inputs and
        the recurrent state."""
        conv = self.conv1d
        return conv.in_channels * (conv.kernel_size[0] - 1) + self.n_head * self.head_dim * self.state_size

    def describe(self) -> str:
        return (f"{self.n_head} heads of {self.head_dim}, state {self.state_size}, B and C in {self.n_groups} "
                f"groups, chunks of {self.chunk_size}")


class Mamba2HF(HFLayout):
    """Mamba2ForCausalLM: every layer this mixer, no feed-forward layer, RMSNorms."""

    model_types = ("mamba2",)

    def exporter(self, model):
        config = model.config
        plain = all(block.mlp is None for block in model.transformer.h) and config.norm == "rmsnorm"
        return to_mamba2 if plain and config.positions == "rope" else None

    def state_dict(self, weights, model, source):
        return joined(weights, model, source, mamba2_layout(model))


def to_mamba2(model, eot_id: int | None):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    hp, mixer = model.config, model.transformer.h[0].attn
    config = Mamba2Config(
        vocab_size=model.vocab_size, hidden_size=hp.n_embd, num_hidden_layers=hp.n_layer, state_size=mixer.state_size,
        expand=mixer.inner // hp.n_embd, head_dim=mixer.head_dim, num_heads=mixer.n_head, n_groups=mixer.n_groups,
        conv_kernel=mixer.conv1d.kernel_size[0], chunk_size=mixer.chunk_size, use_bias=False, use_conv_bias=True,
        layer_norm_epsilon=1e-5, tie_word_embeddings=hp.tie_embeddings, bos_token_id=eot_id, eos_token_id=eot_id,
        pad_token_id=eot_id,
    )
    return load_into(Mamba2ForCausalLM(config), laid_out(model, mamba2_layout(model)))


def mamba2_layout(model) -> Layout:
    """Each lmzoo weight of a Mamba-2 model and the Mamba2ForCausalLM weight it is."""
    layout = trunk_names(model, "backbone.embeddings.weight", "backbone.norm_f.weight")
    for i in range(len(model.transformer.h)):
        ours, theirs = f"transformer.h.{i}.", f"backbone.layers.{i}."
        layout += [(ours + "ln_1.weight", [theirs + "norm.weight"], None),
                   (ours + "attn.c_proj.weight", [theirs + "mixer.out_proj.weight"], None),
                   *same_names(ours + "attn.", theirs + "mixer.", ["in_proj.weight", "conv1d.weight", "conv1d.bias",
                                                                  "dt_bias", "A_log", "D", "norm.weight"])]
    return layout


Mamba2.hf = Mamba2HF(examples={
    "groups_of_heads": (dict(layer_pattern=[Mamba2.name], ffn_pattern=[], mixers={Mamba2.name: dict(
        state=8, head_dim=16, groups=2, chunk_size=8)}), "Mamba2ForCausalLM"),
    # The attention's MLP after each layer: no transformers class has it.
    "with_mlp": (dict(layer_pattern=[Mamba2.name], mixers={Mamba2.name: dict(head_dim=16, chunk_size=8)}), None),
})
