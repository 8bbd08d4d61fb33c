"""How much memory a device has, so that a command refuses an allocation larger than it before making it: the
kernel would kill the process, or torch fail deep inside with its allocator's message."""

import os

import torch

from lmzoo.errors import UserError


def device_memory(device: torch.device) -> int:
    """The bytes of memory of `device`: a CUDA GPU's own, else the machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(size: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse `what` (a phrase that ends in its size) when its `size` bytes exceed the memory of `device`."""
    memory = device_memory(device)
    if size > memory:
        holder = f"{device}'s" if device.type == "cuda" else "this machine's"
        raise UserError(f"{what}, more than {holder} {memory / 1e9:,.0f} GB of memory; {fix}")
