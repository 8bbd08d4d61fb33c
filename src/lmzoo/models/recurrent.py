"""What the recurrent sequence mixers (Mamba-2, Gated DeltaNet) share: the short causal convolution that keeps
its own state, the gated RMSNorm on their output, and the decoding state they keep in the cache."""

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import FORWARD_AND_BACKWARD


class Scan(NamedTuple):
    """A recurrent mixer's two forms of its recurrence, which must agree (tests/test_mixers.py proves it for every
    mixer that declares one as its `scan`)."""

    # chunked(*inputs, chunk, state=None, final_state=True) -> (outputs, final state): the training form.
    chunked: Callable
    # step(*inputs of one token, state) -> (outputs, state): the decoding form.
    step: Callable
    # inputs(T, heads, width, state) -> random inputs of T tokens, batch 2 (widths of its own by default).
    inputs: Callable
    # The positions of the inputs that `chunked` multiplies in their own dtype (bf16 under autocast, as the reference
    # kernels do); it keeps the others (decays) and the state in float32.
    operands: tuple[int, ...]
    # A fast kernel that replaces `chunked` where it is installed: (available() -> it or None, the replacement of
    # `chunked` that calls it, its package's name).
    kernel: tuple[Callable, Callable, str] | None = None


class RecurrentState:
    """A recurrent layer's decoding state: the last kernel - 1 inputs of its short convolution and its
    recurrent matrix per head. Both keep their size however many tokens have been read."""

    def __init__(self):
        self.conv: torch.Tensor | None = None
        self.recurrent: torch.Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv, self.recurrent) if t is not None)


class ShortConv(nn.Conv1d):
    """A depthwise causal convolution over the sequence, of `kernel` taps per channel (nn.Conv1d's weights). With a
    state, it continues from the inputs the state holds and keeps the last kernel - 1 for the next step."""

    def __init__(self, channels: int, kernel: int, bias: bool):
        super().__init__(channels, channels, kernel, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor, state: RecurrentState | None = None) -> torch.Tensor:
        """x: (B, T, channels) -> (B, T, channels) in x's dtype, summed in the weights' (float32) as the reference
        kernel (causal-conv1d) sums bf16 inputs."""
        T, keep = x.size(1), self.kernel_size[0] - 1
        past = state is not None and state.conv is not None
        x = torch.cat((state.conv, x), dim=1) if past else F.pad(x, (0, 0, keep, 0))
        if state is not None:
            state.conv = x[:, x.size(1) - keep:]
        return ShiftedSum.apply(x, self.weight[:, 0], self.bias).to(x.dtype)

    def flops_per_token(self) -> int:
        """Training FLOPs per token: a multiply-add per tap and channel, as PyTorch counts the depthwise F.conv1d
        this equals, forward and backward (3x the forward) as for every product."""
        return FORWARD_AND_BACKWARD * 2 * self.in_channels * self.kernel_size[0]


class ShiftedSum(torch.autograd.Function):
    """A depthwise causal convolution as a sum of shifted products: y_t = bias + sum_k taps_k x_{t+k} over x (B,
    T + kernel - 1, channels) padded or preceded by its past, taps (channels, kernel). Not F.conv1d, whose backward
    FlopCounterMode counts as a dense convolution's: counted as the depthwise convolution it is
    (ShortConv.flops_per_token). Its own backward adds each shifted gradient in place where autograd's
    of the same sum would copy the whole input's gradient once a tap."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, taps)
        ctx.has_bias = bias is not None
        T = x.size(1) - taps.size(1) + 1
        # bf16 inputs converted once: products of bf16 by float32 taps run several times slower than float32's. A
        # tap's weights as a contiguous row: broadcasting a strided column over x runs several times slower too.
        x, rows = x.to(taps.dtype), taps.t().contiguous()
        y = x[:, :T] * rows[0] if bias is None else torch.addcmul(bias, x[:, :T], rows[0])
        for tap in range(1, taps.size(1)):
            y.addcmul_(x[:, tap : tap + T], rows[tap])
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, taps = ctx.saved_tensors
        dtype, x, rows = x.dtype, x.to(taps.dtype), taps.t().contiguous()
        T = grad.size(1)
        x_grad = None
        if ctx.needs_input_grad[0]:
            x_grad = grad.new_empty(x.shape)
            torch.mul(grad, rows[0], out=x_grad[:, :T])
            x_grad[:, T:].zero_()
            for tap in range(1, rows.size(0)):
                x_grad[:, tap : tap + T].addcmul_(grad, rows[tap])
            x_grad = x_grad.to(dtype)
        taps_grad = torch.stack([(grad * x[:, tap : tap + T]).sum((0, 1)) for tap in range(rows.size(0))], dim=1)
        return x_grad, taps_grad.to(rows.dtype), grad.sum((0, 1)) if ctx.has_bias else None


class GatedRMSNorm(nn.Module):
    """RMSNorm over groups of `group_size` channels with a learned scale of `dim`, gated by silu(gate).

    Mamba-2 gates before normalising (`gate_first`), Gated DeltaNet after, as their references do.
    """

    def __init__(self, dim: int, group_size: int, gate_first: bool, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.gate_first, self.eps = group_size, gate_first, eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        if self.gate_first:
            x = x * F.silu(gate)
        shape = x.shape
        x = F.rms_norm(x.reshape(*shape[:-1], -1, self.group_size), (self.group_size,), eps=self.eps).reshape(shape)
        x = x * self.weight
        return x if self.gate_first else x * F.silu(gate)


def recur(step, chunked, inputs: tuple[torch.Tensor, ...], chunk: int, state: RecurrentState | None) -> torch.Tensor:
    """A mixer's recurrence over `inputs` ((batch, heads, T, ...) each, or a constant per head): one token after a
    state by `step`, anything else by `chunked`, continuing from the state's recurrent matrix and leaving the
    final one there (with no state to keep it, the final one is not computed). It runs outside autocast: the
    chunked forms multiply their inputs in the dtype they come in (bf16 under autocast, as the reference kernels
    do) and keep their decays and state in float32, as a state summed over thousands of tokens would lose its small
    updates in bf16; a step runs in float32. The outputs come back in the first input's dtype."""
    dtype = inputs[0].dtype
    with torch.autocast(inputs[0].device.type, enabled=False):
        previous = state.recurrent if state is not None else None
        if previous is not None and inputs[0].size(2) == 1:
            outputs, final = step(*(t.float()[:, :, 0] if t.dim() > 1 else t.float() for t in inputs), previous)
            outputs = outputs[:, :, None]
        else:
            outputs, final = chunked(*inputs, chunk, previous, final_state=state is not None)
    if state is not None:
        state.recurrent = final
    return outputs.to(dtype)


def decayed(log_decay: torch.Tensor, *scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each of `scores` (..., size, size) times the decay within a chunk, in float32: exp(log_decay_i - log_decay_j)
    where token i reads token j (j <= i), 0 where it does not, from the cumulative log decays (..., size) of decays
    at most 1 (falling along the chunk). Differences of the cumulative sums, not products of their exponentials,
    whose factors would overflow over a long chunk; with its own backward (DecayedScores), which passes over these
    size x size matrices fewer times than autograd's of the same formula. A score may broadcast to the decays'
    shape (Mamba-2's, one for a group of heads); its gradient is summed back to its own."""
    return DecayedScores.apply(log_decay, *scores)


class DecayedScores(torch.autograd.Function):
    """decayed()'s products and their gradients: for out_k = scores_k * D with D = exp(l_i - l_j) (lower triangle),
    d scores_k = g_k * D, and through D, d l = rows - columns of the sum over k of g_k * out_k."""

    @staticmethod
    def forward(ctx, log_decay: torch.Tensor, *scores: torch.Tensor):
        size = log_decay.size(-1)
        lower = torch.ones(size, size, dtype=log_decay.dtype, device=log_decay.device).tril_()
        # The log decays fall along a chunk (each decay is at most 1), so l_i - l_j <= 0 where i >= j: clamped to 0
        # above the diagonal (exp 1, then masked to 0) and to -87 below it, past which exp leaves float32's normal
        # numbers (6e-39 and less, where its exp runs several times slower). 2.5x as fast as a masked_fill to -inf
        # and its exp, which are slow over -inf.
        decay = (log_decay[..., :, None] - log_decay[..., None, :]).clamp_(-87, 0).exp_().mul_(lower)
        outputs = tuple(score * decay for score in scores)
        ctx.save_for_backward(decay, *outputs)
        ctx.scores = [(score.dtype, score.shape) for score in scores]
        return outputs

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        decay, *outputs = ctx.saved_tensors
        through = None
        for grad, output in zip(grads, outputs):
            if grad is not None:
                through = grad * output if through is None else through.addcmul_(grad, output)
        log_grad = None if through is None else through.sum(-1) - through.sum(-2)
        return log_grad, *(None if grad is None else (grad * decay).sum_to_size(shape).to(dtype)
                           for grad, (dtype, shape) in zip(grads, ctx.scores))


def chunks(x: torch.Tensor, size: int) -> torch.Tensor:
    """x (B, heads, T, ...) zero-padded along T to whole chunks: (B, heads, T / size, size, ...)."""
    pad = -x.size(2) % size
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(x.size(0), x.size(1), -1, size, *x.shape[3:])


def unchunked(x: torch.Tensor, T: int) -> torch.Tensor:
    """x (B, heads, chunks, size, ...) back to (B, heads, T, ...), the padding cut off (and only where there is
    some: the backward of a slice copies the whole gradient)."""
    x = x.flatten(2, 3)
    return x if x.size(2) == T else x[:, :, :T]


def leading_chunks(x: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` chunks of x (B, heads, chunks, ...): x itself when that is all of them, for the same reason."""
    return x if x.size(2) == count else x[:, :, :count]


def softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    """The y with softplus(y) = x, for initialising a bias that goes through softplus."""
    return x + torch.log(-torch.expm1(-x))


def initial_time_steps(n_head: int, low: float = 1e-3, high: float = 0.1) -> torch.Tensor:
    """Time steps log-uniform in [low, high], one per head, as Mamba initialises them."""
    return torch.exp(torch.rand(n_head) * (torch.log(torch.tensor(high)) - torch.log(torch.tensor(low)))
                     + torch.log(torch.tensor(low)))
