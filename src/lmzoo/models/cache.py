"""The KV cache every attention model shares."""

import torch


class KVCache:
    """Keys and values of every layer for the tokens seen so far, up to `capacity` tokens.

    Each layer's buffers are allocated at its first `update`, in the shape, dtype and device of its keys,
    so a layer may have any number of key/value heads. `position` is the number of tokens cached: it
    advances once the last layer has stored a step's keys, so every layer of one forward pass sees the
    same starting position.
    """

    def __init__(self, n_layer: int, capacity: int):
        self.n_layer, self.capacity = n_layer, capacity
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.position = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, heads, T, head_dim) for `layer`; return all keys and values so far."""
        end = self.position + k.size(-2)
        if end > self.capacity:
            raise ValueError(f"{end} tokens exceed the cache's capacity of {self.capacity}")
        if self.keys[layer] is None:
            shape = (k.size(0), k.size(1), self.capacity, k.size(3))
            self.keys[layer] = k.new_zeros(shape)
            self.values[layer] = v.new_zeros(shape)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.position : end] = k
        values[:, :, self.position : end] = v
        if layer == self.n_layer - 1:
            self.position = end
        return keys[:, :, :end], values[:, :, :end]
