"""Sparse routing shared by the mixture-of-experts models: a top-k router with its auxiliary losses,
grouped dispatch that runs each expert on its own tokens only, and an MoE feed-forward layer."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.blocks import MLP
from lmzoo.models.transformer import Transformer


class Router(nn.Module):
    """Picks the top_k experts per token, with softmax weights renormalized over the chosen ones.

    In training it records `aux_loss`: the Switch Transformer load-balancing loss (n_experts times the
    dot product of each expert's share of assignments and its mean router probability; 1 when
    balanced) times `balance_weight`, plus the router z-loss (mean squared logsumexp of the logits)
    times `z_weight`; and `expert_fraction`, the share of assignments each expert received.
    """

    def __init__(self, dim: int, n_experts: int, top_k: int, balance_weight: float = 0.01, z_weight: float = 0.001):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be within 1..n_experts ({n_experts}), got {top_k}")
        self.n_experts, self.top_k = n_experts, top_k
        self.balance_weight, self.z_weight = balance_weight, z_weight
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.aux_loss: torch.Tensor | None = None
        self.expert_fraction: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and expert ids, both (N, top_k), for tokens x of shape (N, dim)."""
        logits = self.gate(x).float()
        probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.training:
            fraction = F.one_hot(experts, self.n_experts).flatten(0, 1).float().mean(dim=0)
            balance = self.n_experts * (fraction * probs.mean(dim=0)).sum()
            z_loss = torch.logsumexp(logits, dim=-1).square().mean()
            self.aux_loss = self.balance_weight * balance + self.z_weight * z_loss
            self.expert_fraction = fraction.detach()
        return weights.to(x.dtype), experts


def run_experts(experts: nn.ModuleList, inputs: torch.Tensor, expert_ids: torch.Tensor,
                capacity: int | None = None) -> torch.Tensor:
    """Each expert applied to the rows routed to it, in one batch per expert.

    inputs: (N, D) rows shared by a token's top_k slots, or (N, top_k, D) one row per slot;
    expert_ids: (N, top_k). Returns (N, top_k, D_out). Assignments are grouped by a stable sort,
    so an expert over `capacity` keeps its earliest tokens; the dropped slots give zeros.
    """
    top_k = expert_ids.size(1)
    rows = inputs.reshape(-1, inputs.size(-1))
    flat = expert_ids.flatten()
    order = flat.argsort(stable=True)
    slots, outputs = [], []
    for expert, routed in zip(experts, order.split(flat.bincount(minlength=len(experts)).tolist())):
        routed = routed[:capacity]
        if len(routed):
            slots.append(routed)
            outputs.append(expert(rows[routed if inputs.dim() == 3 else routed // top_k]))
    outputs = torch.cat(outputs)
    result = outputs.new_zeros(flat.numel(), outputs.size(-1))
    return result.index_copy(0, torch.cat(slots), outputs).view(*expert_ids.shape, -1)


class MoE(nn.Module):
    """Sparse feed-forward: a router sends each token to top_k expert MLPs and mixes their outputs.

    With a `capacity_factor`, an expert takes at most capacity_factor * tokens * top_k / n_experts
    tokens of a batch; the rest skip it (the residual stream carries them on).
    """

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, capacity_factor: float | None = None,
                 balance_weight: float = 0.01, z_weight: float = 0.001, activation: str = "silu",
                 gated: bool = True, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.router = Router(dim, n_experts, top_k, balance_weight, z_weight)
        self.experts = nn.ModuleList(MLP(dim, hidden, activation, gated, bias, dropout) for _ in range(n_experts))
        self.capacity_factor = capacity_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        weights, experts = self.router(flat)
        capacity = None
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * flat.size(0) * self.router.top_k / self.router.n_experts)
        mixed = (run_experts(self.experts, flat, experts, capacity) * weights[..., None]).sum(dim=1)
        return mixed.view_as(x)

    def inactive_parameters(self) -> int:
        """Parameters a token does not use: those of the experts it is not routed to."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        return (self.router.n_experts - self.router.top_k) * per_expert


class SparseTransformer(Transformer):
    """A Transformer whose layers route tokens: adds the routers' auxiliary losses to training,
    logs each router's expert usage, and counts the parameters active per token."""

    def routers(self) -> list[tuple[str, Router]]:
        return [(name, module) for name, module in self.named_modules() if isinstance(module, Router)]

    def auxiliary_loss(self) -> torch.Tensor | None:
        losses = [router.aux_loss for _, router in self.routers() if router.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def log_routing(self) -> None:
        for name, router in self.routers():
            if router.expert_fraction is not None:
                prefix = "experts/" + name.removeprefix("transformer.h.").removesuffix(".router")
                for expert, fraction in enumerate(router.expert_fraction.tolist()):
                    self.log(f"{prefix}/{expert}", fraction)

    def parameter_counts(self) -> tuple[int, int]:
        total, _ = super().parameter_counts()
        inactive = sum(m.inactive_parameters() for m in self.modules() if hasattr(m, "inactive_parameters"))
        return total, total - inactive
