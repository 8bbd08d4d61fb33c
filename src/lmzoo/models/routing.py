"""Sparse routing shared by the mixture-of-experts models: a top-k router with its auxiliary losses,
grouped dispatch that runs each expert on its own tokens only, and an MoE feed-forward layer."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import Routing, RoutingLog, Sublayer, linear_weights
from lmzoo.models.blocks import MLP


class Router(nn.Module):
    """Picks the top_k experts per token, with softmax weights renormalized over the chosen ones.

    Its auxiliary loss (training only) is the Switch Transformer load-balancing loss (n_experts times the
    dot product of each expert's share of assignments and its mean router probability; 1 when balanced)
    times `balance_weight`, plus the router z-loss (mean squared logsumexp of the logits) times `z_weight`.
    """

    def __init__(self, dim: int, n_experts: int, top_k: int, balance_weight: float = 0.01, z_weight: float = 0.001):
        super().__init__()
        self.n_experts, self.top_k = n_experts, top_k
        self.balance_weight, self.z_weight = balance_weight, z_weight
        self.gate = nn.Linear(dim, n_experts, bias=False)

    def forward(self, x: torch.Tensor) -> Routing:
        """The routing of tokens x of shape (N, dim)."""
        logits = self.gate(x).float()
        probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        if not self.training:
            return Routing(weights, experts, None, None)
        load = F.one_hot(experts, self.n_experts).flatten(0, 1).float().mean(dim=0)
        balance = self.n_experts * (load * probs.mean(dim=0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        return Routing(weights, experts, self.balance_weight * balance + self.z_weight * z_loss, load.detach())


def run_experts(experts: nn.ModuleList | list[nn.Module], inputs: torch.Tensor, expert_ids: torch.Tensor,
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


class RoutedLayer(Sublayer):
    """A layer whose router sends each token to `top_k` of its `experts`; `name` labels its routing.

    Only the chosen experts' parameters are active for a token.
    """

    router: Router
    experts: nn.ModuleList

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        # How the layer runs its experts on their tokens: run_experts, kept eager under torch.compile.
        self.dispatch = run_experts

    def keep_dispatch_eager(self) -> None:
        """For torch.compile. Which rows reach which expert depends on the data, so a compiled dispatch builds a
        graph for each new count of tokens per expert, for each call site (MoA's queries and outputs and the MoE
        FFN share run_experts), until Dynamo's recompile limit. It runs eagerly between the compiled parts."""
        self.dispatch = torch.compiler.disable(run_experts)

    def inactive_parameters(self) -> int:
        """Parameters a token does not use: those of the experts it is not routed to."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        return (self.router.n_experts - self.router.top_k) * per_expert

    def inactive_linear_weights(self) -> int:
        """Linear weights a token does not multiply by: those of the experts it is not routed to."""
        return (self.router.n_experts - self.router.top_k) * linear_weights(self.experts[0])


class MoE(RoutedLayer):
    """Sparse feed-forward: a router sends each token to top_k expert MLPs and mixes their outputs.

    With a `capacity_factor`, an expert takes at most capacity_factor * tokens * top_k / n_experts
    tokens of a batch; the rest skip it (the residual stream carries them on).
    """

    def __init__(self, name: str, dim: int, hidden: int, n_experts: int, top_k: int,
                 capacity_factor: float | None = None, balance_weight: float = 0.01, z_weight: float = 0.001,
                 activation: str = "silu", gated: bool = True, bias: bool = False, dropout: float = 0.0):
        super().__init__(name)
        self.router = Router(dim, n_experts, top_k, balance_weight, z_weight)
        self.experts = nn.ModuleList(MLP(dim, hidden, activation, gated, bias, dropout) for _ in range(n_experts))
        self.capacity_factor = capacity_factor

    lora_targets = {"mlp": ("experts.*.c_fc", "experts.*.c_proj")}

    def describe(self) -> str:
        return f"moe ({self.router.n_experts} experts, top {self.router.top_k}, each {self.experts[0].describe()})"

    def forward(self, x: torch.Tensor, routing: RoutingLog | None = None) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        decision = self.router(flat)
        if routing is not None:
            routing.record(self.name, decision)
        capacity = None
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * flat.size(0) * self.router.top_k / self.router.n_experts)
        mixed = (self.dispatch(self.experts, flat, decision.experts, capacity) * decision.weights[..., None]).sum(dim=1)
        return mixed.view_as(x)
