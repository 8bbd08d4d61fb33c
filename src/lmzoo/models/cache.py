"""The one decoding cache every model shares: a state per layer, made by the layer's own mixer."""

from typing import Callable, TypeVar

import torch

State = TypeVar("State")


class Cache:
    """What each layer keeps of the tokens seen so far, for incremental decoding.

    A layer's state is made by its mixer at the layer's first step (`state(layer, make)`): keys and
    values for attention (`KVState`), a recurrent state for a recurrent mixer. `position` counts the
    tokens seen; the model advances it once every layer has taken a step, so all layers of one forward
    pass see the same starting position. `capacity` is the most tokens the cache can hold, the context of
    the model's attention layers; None when no layer's state grows with the tokens (a recurrent model),
    so decoding never has to restart.
    """

    def __init__(self, n_layer: int, capacity: int | None):
        self.states: list = [None] * n_layer
        self.capacity = capacity
        self.position = 0

    def state(self, layer: int, make: Callable[[], State]) -> State:
        """Layer `layer`'s state, made by `make()` at its first step."""
        if self.states[layer] is None:
            self.states[layer] = make()
        return self.states[layer]

    def advance(self, tokens: int) -> None:
        """Count a step of `tokens` tokens that every layer has stored."""
        if self.capacity is not None and self.position + tokens > self.capacity:
            raise ValueError(f"{self.position + tokens} tokens exceed the cache's capacity of {self.capacity}")
        self.position += tokens

    @property
    def full(self) -> bool:
        """Whether the next token no longer fits: the sampler then refills a new cache from recent context."""
        return self.capacity is not None and self.position >= self.capacity

    def nbytes(self) -> int:
        """Memory the layers' states hold now."""
        return sum(state.nbytes() for state in self.states if state is not None)


class KVState:
    """Keys and values of one attention layer, up to `capacity` tokens.

    The buffers are allocated at the first `update`, in the shape, dtype and device of its keys, so a layer
    may have any number of key/value heads.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, heads, T, head_dim) of the tokens from position `start` on; return all keys and
        values so far."""
        end = start + k.size(-2)
        if end > self.capacity:
            raise ValueError(f"{end} tokens exceed the cache's capacity of {self.capacity}")
        if self.keys is None:
            self.keys = k.new_zeros((k.size(0), k.size(1), self.capacity, k.size(3)))
            self.values = v.new_zeros((v.size(0), v.size(1), self.capacity, v.size(3)))
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)


class WindowState:
    """Keys and values of a sliding-window attention layer: only the last `window` - 1 tokens, all that a query
    sees besides itself, so the layer's memory stays bounded however long the text."""

    def __init__(self, window: int):
        self.window = window
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Take k, v (B, heads, T, head_dim) of the tokens from position `start` on; return them after the
        kept ones (positions start + T - len through start + T - 1)."""
        if self.keys is not None:
            k, v = torch.cat((self.keys, k), dim=-2), torch.cat((self.values, v), dim=-2)
        keep = max(0, k.size(-2) - (self.window - 1))
        # Copies, so that this step's longer tensors are freed.
        self.keys, self.values = k[:, :, keep:].clone(), v[:, :, keep:].clone()
        return k, v

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)
