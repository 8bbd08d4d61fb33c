"""Gated DeltaNet's sequence mixer (Yang, Kautz & Hatamizadeh, "Gated Delta Networks", ICLR 2025).

Per head, with L2-normalised keys k and queries q (scaled by 1/sqrt(head_dim)), a decay alpha_t = exp(g_t) and a
writing strength beta_t in (0, 1), the state S of (key_dim, value_dim) follows the gated delta rule:
    S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T,    o_t = S_t^T q_t.
Training runs the chunked form (`gated_delta_chunked`): within a chunk the delta rule's updates are folded into
one unit-triangular solve (the WY representation), the state passed from chunk to chunk; decoding runs the rule
one token at a time (`gated_delta_step`). Around it: q, k, v from one projection through a short causal
convolution and silu, g and beta from their own projections, and an output gate through a gated RMSNorm per
head. Parameter layout as OLMo-Hybrid's layer in Hugging Face transformers; lmzoo.checkpoints.export writes
Qwen3NextForCausalLM, whose layer is the same with its projections grouped per head.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import FORWARD_AND_BACKWARD, SequenceMixer
from lmzoo.models.blocks import make_dropout
from lmzoo.models.cache import Cache
from lmzoo.models.recurrent import (GatedRMSNorm, RecurrentState, ShortConv, chunks, decayed, initial_time_steps,
                                    recur, softplus_inverse, unchunked)


def l2_normalized(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps), the form the reference kernels use."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def gated_delta_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                        chunk: int, state: torch.Tensor | None = None,
                        final_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Outputs (batch, heads, T, value_dim) and the final state (batch, heads, key_dim, value_dim) of the gated
    delta rule over q, k (batch, heads, T, key_dim), v, log decays g and strengths beta (batch, heads, T),
    continuing from `state` (zeros when None); the final state None unless `final_state`. A zero state is
    neither read nor decayed, and the last chunk's update only made when kept.

    The products of q, k and v run in their dtype, as flash-linear-attention's kernels do (bf16 under autocast);
    the decays, the triangular solve, the state and its products in g's (float32). Only the state's passage from
    chunk to chunk is a loop; the outputs' products are batched over the chunks."""
    dtype, g, beta = q.dtype, g.float(), beta.float()
    T = q.size(2)
    size = min(chunk, T)
    log_decay = chunks(g, size).cumsum(-1)  # (b, h, chunks, size): log alpha_1 ... alpha_t in the chunk
    qs, ks, vs, betas = chunks(q, size), chunks(k, size), chunks(v, size), chunks(beta, size)[..., None]
    # Within a chunk the values written are u_t = beta_t (v_t - gamma_t S_0^T k_t - sum_{j<t} decay_tj (k_t.k_j) u_j),
    # gamma_t the decay since the chunk's start and S_0 the state there: a unit lower-triangular system in u,
    # solved once per chunk as u = U - W S_0. The solve reads the strictly lower triangle only (its unit diagonal
    # implied), and its gradient keeps to that triangle.
    written, within = decayed(log_decay, betas * (ks @ ks.transpose(-1, -2)), qs @ ks.transpose(-1, -2))
    right = torch.cat((betas * vs, betas * ks * log_decay[..., None].exp()), dim=-1)
    U, W = torch.linalg.solve_triangular(written, right, upper=False, unitriangular=True).split(
        [v.size(-1), k.size(-1)], dim=-1)
    count = qs.size(2)
    updates = count if final_state else count - 1
    if updates:
        to_end = ks * (log_decay[..., -1:] - log_decay)[..., None].exp()
        through = log_decay[..., -1].exp()
    us, entering = [], [state]
    for i in range(count):
        u = U[:, :, i] if state is None else U[:, :, i] - W[:, :, i] @ state
        us.append(u)
        if i < updates:
            update = to_end[:, :, i].transpose(-1, -2) @ u
            state = update if state is None else torch.addcmul(update, through[:, :, i, None, None], state)
            entering.append(state)
    out = within.to(dtype) @ (U if entering[0] is None and count == 1 else torch.stack(us, dim=2)).to(dtype)
    # Chunks entered by a state read it, decayed since the chunk's start.
    first = 0 if entering[0] is not None else 1
    if count > first:
        q_decayed = qs[:, :, first:] * log_decay[:, :, first:, :, None].exp()
        read = q_decayed @ torch.stack(entering[first:count], dim=2)
        out = torch.cat((out[:, :, :first], out[:, :, first:] + read), dim=2)
    return unchunked(out, T), state if final_state else None


def gated_delta_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the rule: q, k (batch, heads, key_dim), v (batch, heads, value_dim), g, beta (batch, heads)."""
    state = g.exp()[..., None, None] * state
    u = beta[..., None] * (v - (k[..., None, :] @ state).squeeze(-2))
    state = state + k[..., :, None] * u[..., None, :]
    return (q[..., None, :] @ state).squeeze(-2), state


@functools.cache
def fla_rule():
    """flash-linear-attention's chunked gated delta rule, when it is installed (it runs on CUDA only); None
    otherwise."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None
    return chunk_gated_delta_rule


def gated_delta_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                       chunk: int, state: torch.Tensor | None = None,
                       final_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`gated_delta_chunked` by flash-linear-attention's kernel, which takes the sequence before the heads and
    chooses its own chunks; q comes normalised and scaled already."""
    o, final = fla_rule()(*(t.transpose(1, 2).contiguous() for t in (q, k, v, g, beta)), scale=1.0,
                          initial_state=state, output_final_state=final_state)
    return o.transpose(1, 2), final


def chunked_rule(q: torch.Tensor):
    """The chunked form for q's device: flash-linear-attention's kernel on CUDA where it is installed, else
    lmzoo's."""
    return gated_delta_kernel if q.is_cuda and fla_rule() is not None else gated_delta_chunked


class GatedDeltaNet(SequenceMixer):
    """Gated DeltaNet's mixer: (B, T, dim) -> (B, T, dim), with the Attention's call signature."""

    def __init__(self, dim: int, n_head: int, head_dim: int, value_expand: int = 2, conv_kernel: int = 4,
                 chunk_size: int = 64, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.key_dim, self.value_dim = n_head, head_dim, value_expand * head_dim
        self.chunk_size = chunk_size
        keys, values = n_head * self.key_dim, n_head * self.value_dim
        # q, k and v in one matmul, convolved together as the reference does.
        self.c_attn = nn.Linear(dim, 2 * keys + values, bias=False)
        self.conv1d = ShortConv(2 * keys + values, conv_kernel, bias=False)
        self.a_proj = nn.Linear(dim, n_head, bias=False)
        self.b_proj = nn.Linear(dim, n_head, bias=False)
        self.g_proj = nn.Linear(dim, values, bias=False)
        self.dt_bias = nn.Parameter(softplus_inverse(initial_time_steps(n_head)))
        # g = -exp(A_log) softplus(a + dt_bias): per-head decay rates drawn in (0, 16) as the reference does.
        self.A_log = nn.Parameter(torch.empty(n_head).uniform_(1e-3, 16).log())
        self.o_norm = GatedRMSNorm(self.value_dim, self.value_dim, gate_first=False)
        self.c_proj = nn.Linear(values, dim, bias=False)
        # On the mixer's output, as the Attention's.
        self.resid_dropout = make_dropout(dropout)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0, routing=None) -> torch.Tensor:
        batch, T, _ = x.shape
        keys = self.n_head * self.key_dim
        state = cache.state(layer, RecurrentState) if cache is not None else None
        q, k, v = F.silu(self.conv1d(self.c_attn(x), state)).split([keys, keys, self.n_head * self.value_dim], dim=-1)
        q, k = (l2_normalized(t.view(batch, T, self.n_head, self.key_dim).transpose(1, 2)) for t in (q, k))
        q = q * self.key_dim ** -0.5
        v = v.view(batch, T, self.n_head, self.value_dim).transpose(1, 2)
        beta = self.b_proj(x).sigmoid().transpose(1, 2)
        g = (-self.A_log.exp() * F.softplus(self.a_proj(x) + self.dt_bias)).transpose(1, 2)
        o = recur(gated_delta_step, chunked_rule(q), (q, k, v, g, beta), self.chunk_size, state)
        gate = self.g_proj(x).view(batch, T, self.n_head, self.value_dim)
        return self.resid_dropout(self.c_proj(self.o_norm(o.transpose(1, 2), gate).flatten(2)))

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mixing_flops(self, context: int) -> int:
        """Training FLOPs per token of the chunked form's products over `context` tokens in chunks of
        min(chunk_size, context), the last one zero-padded: k k^T, q k^T and the outputs within each chunk; the
        incoming state's read by W and by q in every chunk but the first, and the state's update in every chunk
        but the last (whose final state training does not keep). Of the triangular solve, only its backward's
        product (the gradient of its matrix) is counted: FlopCounterMode has no formula for the solves themselves
        (about half that product each, forward and backward), and this count is checked against its."""
        size, keys, values = min(self.chunk_size, context), self.key_dim, self.value_dim
        count = -(-context // size)
        products = FORWARD_AND_BACKWARD * (count * size * size * (2 * keys + values)
                                           + 3 * (count - 1) * size * keys * values)
        solve_gradient = count * size * size * (keys + values)
        return round(2 * self.n_head * (products + solve_gradient) / context)

    def state_numel(self, capacity: int) -> int:
        """Numbers a sequence's decoding state holds, whatever its length: the convolution's last inputs and
        the recurrent state."""
        conv = self.conv1d
        return conv.in_channels * (conv.kernel_size[0] - 1) + self.n_head * self.key_dim * self.value_dim
