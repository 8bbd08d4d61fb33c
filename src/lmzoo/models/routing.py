"""Sparse routing shared by the mixture-of-experts parts: a top-k router with its auxiliary losses, grouped dispatch
that runs each expert on its own tokens only, and the sparse feed-forward part `moe` (Switch / Mixtral style)."""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import FeedForward, PartSettings, Routing, RoutingLog, Sublayer, linear_weights, require
from lmzoo.models.blocks import MLP, MLPSettings


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


@dataclasses.dataclass(kw_only=True)
class RoutingSettings(PartSettings):
    """A routed part's knobs: a token uses top_k of n_experts; the router's Switch load-balancing loss and z-loss,
    weighted by balance_weight and z_weight, are added to the training loss."""

    n_experts: int = 4
    top_k: int = 2
    balance_weight: float = 0.01
    z_weight: float = 0.001

    former = {"balance_weight": "balance_weight", "z_weight": "z_weight"}

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        require(self.n_experts >= 1, f"{key}.n_experts must be a positive integer", self.n_experts)
        require(1 <= self.top_k <= self.n_experts, f"{key}.top_k must lie in 1..n_experts ({self.n_experts})",
                self.top_k)
        require(self.balance_weight >= 0, f"{key}.balance_weight must be >= 0", self.balance_weight)
        require(self.z_weight >= 0, f"{key}.z_weight must be >= 0", self.z_weight)


class RoutedLayer(Sublayer):
    """A layer whose router sends each token to `top_k` of its `experts`; `label` names its routing in the logs.

    Only the chosen experts' parameters are active for a token.
    """

    router: Router
    experts: nn.ModuleList

    def __init__(self, label: str):
        super().__init__()
        self.label = label
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


@dataclasses.dataclass(kw_only=True)
class MoESettings(RoutingSettings, MLPSettings):
    """The sparse feed-forward part's knobs (model.ffns.moe.KNOB): experts that are MLPs of the MLP's knobs, top_k of
    n_experts per token, and a capacity: an expert takes at most capacity_factor * tokens * top_k / n_experts tokens
    of a batch (null: no limit)."""

    capacity_factor: float | None = None

    former = {**MLPSettings.former, **RoutingSettings.former, "n_experts": "n_experts", "top_k": "top_k",
              "capacity_factor": "capacity_factor"}

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        require(self.capacity_factor is None or self.capacity_factor > 0, f"{key}.capacity_factor must be positive or "
                "null", self.capacity_factor)


class MoE(RoutedLayer, FeedForward, name="moe"):
    """Sparse feed-forward: a router sends each token to top_k expert MLPs and mixes their outputs.

    With a `capacity_factor`, an expert takes at most capacity_factor * tokens * top_k / n_experts
    tokens of a batch; the rest skip it (the residual stream carries them on).
    """

    Settings = MoESettings
    replaces = ("lmzoo.models.moe.MoEConfig", "lmzoo.models.moa_moe.MoAMoEConfig")
    lora_targets = {"mlp": ("experts.*.c_fc", "experts.*.c_proj")}

    @classmethod
    def build(cls, trunk, settings: MoESettings, layer: int) -> "MoE":
        return cls(f"{layer}.mlp", trunk.n_embd, settings.width(trunk, layer), settings.n_experts, settings.top_k,
                   settings.capacity_factor, settings.balance_weight, settings.z_weight, settings.activation,
                   settings.gated, trunk.bias, trunk.dropout)

    def __init__(self, label: str, dim: int, hidden: int, n_experts: int, top_k: int,
                 capacity_factor: float | None = None, balance_weight: float = 0.01, z_weight: float = 0.001,
                 activation: str = "silu", gated: bool = True, bias: bool = False, dropout: float = 0.0):
        super().__init__(label)
        self.router = Router(dim, n_experts, top_k, balance_weight, z_weight)
        self.experts = nn.ModuleList(MLP(dim, hidden, activation, gated, bias, dropout) for _ in range(n_experts))
        self.capacity_factor = capacity_factor

    def describe(self) -> str:
        return f"{self.router.n_experts} experts of {self.experts[0].describe()}, top {self.router.top_k}"

    def forward(self, x: torch.Tensor, routing: RoutingLog | None = None) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        decision = self.router(flat)
        if routing is not None:
            routing.record(self.label, decision)
        capacity = None
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * flat.size(0) * self.router.top_k / self.router.n_experts)
        mixed = (self.dispatch(self.experts, flat, decision.experts, capacity) * decision.weights[..., None]).sum(dim=1)
        return mixed.view_as(x)
