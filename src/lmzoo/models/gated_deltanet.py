"""Gated DeltaNet's sequence mixer (Yang, Kautz & Hatamizadeh, "Gated Delta Networks", ICLR 2025).

Per head, with L2-normalised keys k and queries q (scaled by 1/sqrt(head_dim)), a decay alpha_t = exp(g_t) and a
writing strength beta_t in (0, 1), the state S of (key_dim, value_dim) follows the gated delta rule:
    S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T,    o_t = S_t^T q_t.
Training runs the chunked form (`gated_delta_chunked`): within a chunk the delta rule's updates are folded into
one unit-triangular solve (the WY representation), the state passed from chunk to chunk; decoding runs the rule
one token at a time (`gated_delta_step`). Around it: q, k, v from one projection through a short causal
convolution and silu, g and beta from their own projections, and an output gate through a gated RMSNorm per
head. Parameter layout as OLMo-Hybrid's layer in Hugging Face transformers; a model whose every layer is this mixer,
with dense SwiGLU MLPs, exports as Qwen3NextForCausalLM (`Qwen3NextHF`), whose layer is the same with its
projections grouped per head.
"""

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.errors import UserError
from lmzoo.models.base import FORWARD_AND_BACKWARD, Kind, PartSettings, SequenceMixer
from lmzoo.models.blocks import llama_shaped, make_dropout
from lmzoo.models.cache import Cache
from lmzoo.models.hf_layout import HFLayout, load_into, tied_and_checked, true_vocabulary
from lmzoo.models.recurrent import (GatedRMSNorm, RecurrentState, Scan, ShortConv, chunks, decayed, initial_time_steps,
                                    recur, softplus_inverse, unchunked)


def l2_normalized(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps), the form the reference kernels use."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def unit_lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    """(I + lower)^-1 for strictly lower-triangular matrices (..., n, n), by doubling: each diagonal block of 2s
    from the inverses of its two blocks of s, [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]], in batched
    products (n padded to a power of 2 with the identity). Written by hand: PyTorch has no batched triangular
    inverse but LAPACK's, which solves its small matrices one at a time several times slower."""
    *batch, n, _ = lower.shape
    size = 1 << (n - 1).bit_length()
    lower = F.pad(lower, (0, size - n, 0, size - n))
    inverse = lower.new_ones(*batch, size, 1, 1)  # the inverses of the diagonal blocks of 1
    half = 1
    while half < size:
        count = size // (2 * half)
        blocks = lower.unflatten(-1, (count, 2 * half)).unflatten(-3, (count, 2 * half)).diagonal(dim1=-4, dim2=-2)
        below = blocks[..., half:, :half, :].movedim(-1, -3)  # C of each block of 2 half: (..., count, half, half)
        first, second = inverse[..., 0::2, :, :], inverse[..., 1::2, :, :]
        joined = lower.new_zeros(*batch, count, 2 * half, 2 * half)
        joined[..., :half, :half] = first
        joined[..., half:, half:] = second
        joined[..., half:, :half] = -(second @ below @ first)
        inverse, half = joined, 2 * half
    return inverse[..., 0, :n, :n]


@torch.library.custom_op("lmzoo::unit_lower_solve", mutates_args=())
def unit_lower_solve(matrix: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X with (I + strictly lower part of `matrix`) X = right, and that matrix's inverse (kept for the backward):
    torch.linalg.solve_triangular(matrix, right, upper=False, unitriangular=True) through the inverse, as
    flash-linear-attention's kernel solves its chunks (fla/ops/utils/solve_tril.py), in batched products. One
    operator, so that PyTorch's FLOP count sees a triangular solve (LAPACK's count) and not the products that make
    it: the budget counts the solve, whatever computes it."""
    inverse = unit_lower_inverse(matrix.tril(-1))
    return inverse @ right, inverse


@unit_lower_solve.register_fake
def _(matrix: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return right.new_empty(right.shape), matrix.new_empty(matrix.shape)


@torch.library.custom_op("lmzoo::unit_lower_solve_backward", mutates_args=())
def unit_lower_solve_backward(inverse: torch.Tensor, solution: torch.Tensor,
                              grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """unit_lower_solve's gradients, as solve_triangular's: the right-hand sides' (a solve with the transposed
    matrix, by its inverse) and the matrix's, on its strictly lower triangle only."""
    right_grad = inverse.transpose(-1, -2) @ grad
    return -(right_grad @ solution.transpose(-1, -2)).tril_(-1), right_grad


@unit_lower_solve_backward.register_fake
def _(inverse: torch.Tensor, solution: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return inverse.new_empty(inverse.shape), grad.new_empty(grad.shape)


def _save_solution(ctx, inputs, output) -> None:
    solution, inverse = output
    ctx.save_for_backward(inverse, solution)


def _solve_gradients(ctx, grad: torch.Tensor, inverse_grad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(unit_lower_solve_backward(*ctx.saved_tensors, grad))


unit_lower_solve.register_autograd(_solve_gradients, setup_context=_save_solution)


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
    U, W = unit_lower_solve(written, right)[0].split([v.size(-1), k.size(-1)], dim=-1)
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


def gated_delta_inputs(T: int, heads: int = 3, width: int = 4, state: int = 6):
    """Random inputs of the gated delta rule: batch 2, `heads` heads, keys of `width`, values of `state`."""
    return (l2_normalized(torch.randn(2, heads, T, width)), l2_normalized(torch.randn(2, heads, T, width)),
            torch.randn(2, heads, T, state), -torch.rand(2, heads, T), torch.rand(2, heads, T))


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


@dataclasses.dataclass(kw_only=True)
class GatedDeltaNetSettings(PartSettings):
    """Gated DeltaNet's knobs: the model's n_head heads with keys of n_embd / n_head and values `value_expand` times
    wider, `conv_kernel` taps of the short causal convolution, and chunks of `chunk_size` tokens in training."""

    value_expand: int = 2
    conv_kernel: int = 4
    chunk_size: int = 64

    former = {"gdn_value_expand": "value_expand", "conv_kernel": "conv_kernel", "chunk_size": "chunk_size"}

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        self.require_counts(key, "value_expand", "conv_kernel", "chunk_size")


class GatedDeltaNet(SequenceMixer, name="gated_deltanet"):
    """Gated DeltaNet's mixer: (B, T, dim) -> (B, T, dim), with the Attention's call signature."""

    Settings = GatedDeltaNetSettings
    kind = Kind.FLAT
    # q, k and v come from one projection, c_attn, as attention's do.
    lora_targets = {"qkv": ("c_attn",), "proj": ("c_proj",)}
    trunk_knobs = ("n_head",)
    scan = Scan(gated_delta_chunked, gated_delta_step, gated_delta_inputs, operands=(0, 1, 2),
                kernel=(fla_rule, gated_delta_kernel, "fla"))

    @classmethod
    def build(cls, trunk, settings: GatedDeltaNetSettings, layer: int, rotary) -> "GatedDeltaNet":
        return cls(trunk.n_embd, trunk.n_head, trunk.head_dim, settings.value_expand, settings.conv_kernel,
                   settings.chunk_size, trunk.dropout)

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
        # g = -exp(A_log) softplus(a + dt_bias): per-head decay rates drawn in (0, 16) as flash-linear-attention does
        # (fla/models/gated_deltanet/modeling_gated_deltanet.py, `_init_weights`), kept off 0 for the log.
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

    def reference_init(self, residual_scale: float) -> None:
        """As flash-linear-attention does (fla/models/gated_deltanet/modeling_gated_deltanet.py, `_init_weights`,
        whose prenorm_residual_strategy is None by default): every linear and the short convolution at normal(0,
        0.02), the output projection not scaled down (it declares no residual output), the convolution not left at
        nn.Conv1d's own init (std about 0.29 at 4 taps)."""
        nn.init.normal_(self.conv1d.weight, mean=0.0, std=0.02)

    def mixing_flops(self, context: int) -> int:
        """Training FLOPs per token of the chunked form's products over `context` tokens in chunks of
        min(chunk_size, context), the last one zero-padded: k k^T, q k^T and the outputs within each chunk; the
        incoming state's read by W and by q in every chunk but the first, and the state's update in every chunk
        but the last (whose final state training does not keep); the triangular solve of each chunk's
        keys + values right-hand sides, forward and backward (a solve with the transposed matrix), each half a
        product's multiply-adds (LAPACK's count for a triangular solve, dtrsm's m n^2 FLOPs), and its backward's
        product (the gradient of its matrix); and the short convolution's taps."""
        size, keys, values = min(self.chunk_size, context), self.key_dim, self.value_dim
        count = -(-context // size)
        products = FORWARD_AND_BACKWARD * (count * size * size * (2 * keys + values)
                                           + 3 * (count - 1) * size * keys * values)
        # Multiply-adds: the gradient of the matrix, n^2 m; the two solves, n^2 m / 2 each.
        solves = 2 * count * size * size * (keys + values)
        return round(2 * self.n_head * (products + solves) / context) + self.conv1d.flops_per_token()

    def state_numel(self, context: int) -> int:
        """Numbers a sequence's decoding state holds, whatever its length: the convolution's last inputs and
        the recurrent state."""
        conv = self.conv1d
        return conv.in_channels * (conv.kernel_size[0] - 1) + self.n_head * self.key_dim * self.value_dim

    def describe(self) -> str:
        return f"{self.n_head} heads, keys of {self.key_dim}, values of {self.value_dim}, chunks of {self.chunk_size}"


# Qwen3-Next's RMSNorms scale by 1 + weight where lmzoo's scale by weight.
QWEN3_NEXT_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight", "model.norm.weight")


class Qwen3NextHF(HFLayout):
    """Qwen3NextForCausalLM with every layer linear attention and dense SwiGLU MLPs; the layer alone is OLMo-Hybrid's
    OlmoHybridGatedDeltaNet, with the same weights under the same names (`reference_layer`)."""

    model_types = ("qwen3_next",)

    def exporter(self, model):
        return to_qwen3_next if llama_shaped(model.config) else None

    def state_dict(self, weights, model, source):
        state = {}
        for ours, theirs, order in qwen3_next_layout(model):
            if theirs not in weights:
                raise UserError(f"{source} has no weight {theirs}; it does not match its lmzoo.json")
            tensor = weights[theirs] + float(theirs.endswith(QWEN3_NEXT_NORMS))
            sizes = [model.get_parameter(name).size(0) for name in ours]
            if order is not None:
                # Rows in their order; a weight built in parts (c_fc from gate_proj, then up_proj) keeps its first.
                joined = (state[ours[0]] if len(ours) == 1 and ours[0] in state
                          else tensor.new_empty(sum(sizes), *tensor.shape[1:]))
                joined[order] = tensor
                tensor = joined
            state |= dict(zip(ours, tensor.split(sizes) if len(ours) > 1 else [tensor]))
        return tied_and_checked(state, model, source)

    def reference_layer(self, mixer: "GatedDeltaNet", dim: int):
        """OLMo-Hybrid's layer holding `mixer`'s weights, and a function that makes its cache."""
        import transformers
        from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridGatedDeltaNet

        heads, keys, values = mixer.n_head, mixer.key_dim, mixer.value_dim
        config = transformers.OlmoHybridConfig(
            hidden_size=dim, num_hidden_layers=2, num_attention_heads=heads,
            layer_types=["linear_attention", "full_attention"], linear_num_key_heads=heads,
            linear_num_value_heads=heads, linear_key_head_dim=keys, linear_value_head_dim=values,
            linear_allow_neg_eigval=False, linear_conv_kernel_dim=mixer.conv1d.kernel_size[0], vocab_size=8)
        theirs = OlmoHybridGatedDeltaNet(config, layer_idx=0).eval()
        weights = {name.replace("c_proj", "o_proj"): tensor for name, tensor in mixer.state_dict().items()
                   if name != "c_attn.weight"}
        weights |= dict(zip(("q_proj.weight", "k_proj.weight", "v_proj.weight"),
                            mixer.c_attn.weight.split([heads * keys, heads * keys, heads * values])))
        theirs.load_state_dict(weights)
        return theirs, lambda: transformers.DynamicCache(config=config)


def to_qwen3_next(model, eot_id: int | None):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    hp, mixer = model.config, model.transformer.h[0].attn
    config = Qwen3NextConfig(
        vocab_size=model.vocab_size, hidden_size=hp.n_embd, num_hidden_layers=hp.n_layer,
        intermediate_size=model.transformer.h[0].mlp.c_proj.in_features, num_attention_heads=hp.n_head,
        num_key_value_heads=hp.n_head, head_dim=hp.head_dim, layer_types=["linear_attention"] * hp.n_layer,
        linear_num_key_heads=mixer.n_head, linear_num_value_heads=mixer.n_head, linear_key_head_dim=mixer.key_dim,
        linear_value_head_dim=mixer.value_dim, linear_conv_kernel_dim=mixer.conv1d.kernel_size[0], num_experts=0,
        # transformers 5's cache needs an attention layer to size its masks; with none, it decodes uncached.
        use_cache=False,
        rms_norm_eps=1e-5, hidden_act="silu", max_position_embeddings=model.block_size,
        tie_word_embeddings=hp.tie_embeddings, bos_token_id=eot_id, eos_token_id=eot_id,
    )
    state, weights = true_vocabulary(model), {}
    for ours, theirs, order in qwen3_next_layout(model):
        joined = torch.cat([state[name] for name in ours])
        weights[theirs] = (joined if order is None else joined[order]) - float(theirs.endswith(QWEN3_NEXT_NORMS))
    return load_into(Qwen3NextForCausalLM(config), weights)


def qwen3_next_layout(model) -> list[tuple[list[str], str, torch.Tensor | None]]:
    """Each Qwen3NextForCausalLM weight of a Gated DeltaNet model: the lmzoo weights it is made of, and the order
    of their joined rows in it (None: as they are). Qwen3-Next projects each head's q, k, v and output gate z
    together, and each head's b and a together."""
    pairs = [(["transformer.wte.weight"], "model.embed_tokens.weight", None),
             (["transformer.ln_f.weight"], "model.norm.weight", None)]
    if not model.config.tie_embeddings:
        pairs.append((["lm_head.weight"], "lm_head.weight", None))
    for i, block in enumerate(model.transformer.h):
        a, ours, theirs = block.attn, f"transformer.h.{i}.", f"model.layers.{i}."
        H, K, V = a.n_head, a.key_dim, a.value_dim
        per_head = [torch.arange(start + h * size, start + (h + 1) * size)
                    for h in range(H) for start, size in ((0, K), (H * K, K), (2 * H * K, V), (2 * H * K + H * V, V))]
        width = block.mlp.c_proj.in_features
        pairs += [
            ([ours + "ln_1.weight"], theirs + "input_layernorm.weight", None),
            ([ours + "attn.c_attn.weight", ours + "attn.g_proj.weight"], theirs + "linear_attn.in_proj_qkvz.weight",
             torch.cat(per_head)),
            ([ours + "attn.b_proj.weight", ours + "attn.a_proj.weight"], theirs + "linear_attn.in_proj_ba.weight",
             torch.arange(2 * H).view(2, H).T.flatten()),
            ([ours + "attn.c_proj.weight"], theirs + "linear_attn.out_proj.weight", None),
            ([ours + "attn.o_norm.weight"], theirs + "linear_attn.norm.weight", None),
            ([ours + "ln_2.weight"], theirs + "post_attention_layernorm.weight", None),
            ([ours + "mlp.c_fc.weight"], theirs + "mlp.gate_proj.weight", torch.arange(width)),
            ([ours + "mlp.c_fc.weight"], theirs + "mlp.up_proj.weight", torch.arange(width, 2 * width)),
            ([ours + "mlp.c_proj.weight"], theirs + "mlp.down_proj.weight", None),
            *[([ours + "attn." + name], theirs + "linear_attn." + name, None)
              for name in ("conv1d.weight", "dt_bias", "A_log")],
        ]
    return pairs


GatedDeltaNet.hf = Qwen3NextHF(examples={
    "untied": (dict(n_head=2, layer_pattern=[GatedDeltaNet.name], mixers={GatedDeltaNet.name: dict(chunk_size=8)},
                    tie_embeddings=False), "Qwen3NextForCausalLM"),
})
