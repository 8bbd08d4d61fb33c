"""What the recurrent sequence mixers (Mamba-2, Gated DeltaNet) share: the short causal convolution that keeps
its own state, the gated RMSNorm on their output, and the decoding state they keep in the cache."""

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Scan(NamedTuple):
    """A recurrent mixer's two forms of its recurrence, which must agree (tests/test_mixers.py proves it for every
    mixer that declares one as its `scan`)."""

    # chunked(*inputs, chunk, state=None, final_state=True) -> (outputs, final state): the training form.
    chunked: Callable
    # step(*inputs of one token, state) -> (outputs, state): the decoding form.
    step: Callable
    # inputs(T, heads, width, state) -> random inputs of T tokens, batch 2 (widths of its own by default).
    inputs: Callable
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
        """x: (B, T, channels) -> (B, T, channels)."""
        T, keep = x.size(1), self.kernel_size[0] - 1
        past = state is not None and state.conv is not None
        x = torch.cat((state.conv, x), dim=1) if past else F.pad(x, (0, 0, keep, 0))
        if state is not None:
            state.conv = x[:, x.size(1) - keep:]
        # A sum of shifted products rather than F.conv1d: per-channel work like a norm's, which FlopCounterMode
        # leaves uncounted where it counts a grouped convolution's backward as a dense one.
        taps = self.weight[:, 0]
        y = x[:, :T] * taps[:, 0] if self.bias is None else torch.addcmul(self.bias, x[:, :T], taps[:, 0])
        for tap in range(1, keep + 1):
            y = y.addcmul(x[:, tap : tap + T], taps[:, tap])
        return y


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
    final one there (with no state to keep it, the final one is not computed). It runs in float32 outside
    autocast, as the references do: a state summed over thousands of tokens would lose its small updates in bf16.
    The outputs come back in the first input's dtype."""
    dtype = inputs[0].dtype
    with torch.autocast(inputs[0].device.type, enabled=False):
        inputs = tuple(t.float() for t in inputs)
        previous = state.recurrent if state is not None else None
        if previous is not None and inputs[0].size(2) == 1:
            outputs, final = step(*(t[:, :, 0] if t.dim() > 1 else t for t in inputs), previous)
            outputs = outputs[:, :, None]
        else:
            outputs, final = chunked(*inputs, chunk, previous, final_state=state is not None)
    if state is not None:
        state.recurrent = final
    return outputs.to(dtype)


def chunks(x: torch.Tensor, size: int) -> torch.Tensor:
    """x (B, heads, T, ...) zero-padded along T to whole chunks: (B, heads, T / size, size, ...)."""
    pad = -x.size(2) % size
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(x.size(0), x.size(1), -1, size, *x.shape[3:])


def softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    """The y with softplus(y) = x, for initialising a bias that goes through softplus."""
    return x + torch.log(-torch.expm1(-x))


def initial_time_steps(n_head: int, low: float = 1e-3, high: float = 0.1) -> torch.Tensor:
    """Time steps log-uniform in [low, high], one per head, as Mamba initialises them."""
    return torch.exp(torch.rand(n_head) * (torch.log(torch.tensor(high)) - torch.log(torch.tensor(low)))
                     + torch.log(torch.tensor(low)))
