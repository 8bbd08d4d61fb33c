"""Mamba-2's sequence mixer (Dao & Gu, "Transformers are SSMs", 2024): the state-space duality (SSD) layer.

Per head, with a scalar decay a_t = exp(dt_t * A) and a state S of (head_dim, state_size):
    S_t = a_t S_{t-1} + dt_t x_t B_t^T,    y_t = S_t C_t + D x_t.
Training runs the chunked form (`ssd_chunked`): quadratic attention-like products within each chunk, the state
passed from chunk to chunk; decoding runs the recurrence one token at a time (`ssd_step`). Around the scan: one
input projection to [z, x, B, C, dt], a short causal convolution over [x, B, C], B and C shared by groups of
heads, and a gated RMSNorm of y by z before the output projection. Parameter layout as Hugging Face's
Mamba2Mixer (lmzoo.checkpoints.export writes Mamba2ForCausalLM).
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import FORWARD_AND_BACKWARD, SequenceMixer
from lmzoo.models.blocks import make_dropout
from lmzoo.models.cache import Cache
from lmzoo.models.recurrent import (GatedRMSNorm, RecurrentState, ShortConv, chunks, decayed, initial_time_steps,
                                    leading_chunks, recur, softplus_inverse, unchunked)


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int,
                state: torch.Tensor | None = None, final_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y (batch, heads, T, head_dim) and the final state (batch, heads, head_dim, state_size) of the SSD
    recurrence over x (batch, heads, T, head_dim), time steps dt (batch, heads, T), decay rates A (heads,), and
    B, C (batch, groups, T, state_size), continuing from `state` (zeros when None); the final state None unless
    `final_state`. A zero state is neither read nor decayed, and the last chunk's update only made when kept.

    The products run in x's dtype, as mamba_ssm's kernels do (bf16 under autocast), the decays and the state in
    dt's (float32). Every product is batched over the chunks; only the state's decay from chunk to chunk is a loop."""
    dtype, dt, A = x.dtype, dt.float(), A.float()
    B, C = per_head(B, x.size(1)), per_head(C, x.size(1))
    T = x.size(2)
    size = min(chunk, T)
    log_decay = chunks(dt * A[:, None], size).cumsum(-1)  # (b, h, chunks, size): log a_1 ... a_t in the chunk
    xs, Bs, Cs = chunks((x * dt[..., None]).to(dtype), size), chunks(B, size), chunks(C, size)
    # Within a chunk, token i reads token j <= i decayed by a_{j+1} ... a_i.
    (scores,) = decayed(log_decay, Cs @ Bs.transpose(-1, -2))
    y = scores.to(dtype) @ xs
    count = xs.size(2)
    # The state each chunk's own tokens leave at its end (the last chunk's only when kept), then the state that
    # enters each chunk: its predecessor's decayed through it, plus what it wrote.
    written = count if final_state else count - 1
    if written:
        log_written = leading_chunks(log_decay, written)
        to_end = (log_written[..., -1:] - log_written).exp()
        writes = ((leading_chunks(xs, written) * to_end[..., None].to(dtype)).transpose(-1, -2)
                  @ leading_chunks(Bs, written)).float()
        through = log_decay[..., -1].exp()
    entering = [state]
    for i in range(written):
        entering.append(writes[:, :, i] if entering[-1] is None else
                        torch.addcmul(writes[:, :, i], through[:, :, i, None, None], entering[-1]))
    # Chunks entered by a state read it, decayed since the chunk's start.
    first = 0 if state is not None else 1
    if count > first:
        read = torch.stack(entering[first:count], dim=2).to(dtype)
        y_read = (Cs[:, :, first:] @ read.transpose(-1, -2)) * log_decay[:, :, first:, :, None].exp().to(dtype)
        y = torch.cat((y[:, :, :first], y[:, :, first:] + y_read), dim=2)
    return unchunked(y, T), entering[-1] if final_state else None


def ssd_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence: x (batch, heads, head_dim), dt (batch, heads), B, C (batch, groups, state_size)."""
    B, C = per_head(B, x.size(1)), per_head(C, x.size(1))
    state = (dt * A).exp()[..., None, None] * state + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    return (state @ C[..., None]).squeeze(-1), state


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


class Mamba2(SequenceMixer):
    """Mamba-2's mixer: (B, T, dim) -> (B, T, dim), with the Attention's call signature."""

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
        # A = -exp(A_log): head h decays at rate h + 1, as Mamba initialises it.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.n_head + 1, dtype=torch.float32)))
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
        xs = xs.view(batch, T, self.n_head, self.head_dim).transpose(1, 2)
        B, C = (t.view(batch, T, self.n_groups, self.state_size).transpose(1, 2) for t in (B, C))
        dt = F.softplus(dt + self.dt_bias).transpose(1, 2)
        y = recur(ssd_step, chunked_scan(xs), (xs, dt, -self.A_log.exp(), B, C), self.chunk_size, state)
        y = (y + self.D[:, None, None] * xs).transpose(1, 2).reshape(batch, T, self.inner)
        return self.resid_dropout(self.c_proj(self.norm(y, z)))

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mixing_flops(self, context: int) -> int:
        """Training FLOPs per token of the chunked scan's products over `context` tokens in chunks of
        min(chunk_size, context), the last one zero-padded: C B^T and its product with x within each chunk; the
        incoming state's read by C in every chunk but the first, and the state's update in every chunk but the
        last (whose final state training does not keep)."""
        size = min(self.chunk_size, context)
        count = -(-context // size)
        products = count * size * size * (self.state_size + self.head_dim)
        products += 2 * (count - 1) * size * self.state_size * self.head_dim
        return round(FORWARD_AND_BACKWARD * 2 * self.n_head * products / context)

    def state_numel(self, capacity: int) -> int:
        """Numbers a sequence's decoding state holds, whatever its length: the convolution's last inputs and
        the recurrent state."""
        conv = self.conv1d
        return conv.in_channels * (conv.kernel_size[0] - 1) + self.n_head * self.head_dim * self.state_size
