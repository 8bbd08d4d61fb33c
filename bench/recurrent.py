"""Recurrent mixers against attention: MFU of a training step, step time at equal parameters, and decode time
and memory per token as the context grows, where attention's cache grows and a recurrent state does not.

    python bench/recurrent.py [--contexts 1024 4096 16384] [--steps 32] [--threads 1]
    python bench/recurrent.py --only mfu --rounds 5          # the MFU table alone
    python bench/recurrent.py --only mfu --compile --widths 128   # compiled as compile=true does, width 128 only

Random-init models from conf/model/ (gpt_rope, mamba2, gated_deltanet, hybrid). **MFU**: each preset at width 128
with block 64 (the reference comparison's models, `experiment=reference`) and at width 384 with block 256
(nanoGPT's Shakespeare width), batch 16, in fp32 and, on a CPU with native bf16 units, in bf16 autocast: a
training step as a run takes it (forward, cross-entropy, backward, clipping at 1.0, lmzoo's fused AdamW), the
best of `--rounds` rounds after 2 warm-up steps, models in turn within a round; its FLOPs as the budget counts
them (`flops_per_token(block)` x tokens) over the step's wall time and the peak a run's MFU is measured against
(lmzoo.training.perf). **Step time at equal parameters**: each sized to gpt_rope's parameters with
model.target_params, batch 8 x 256, forward and backward. **Decoding** at context L: a cache holding L tokens
(attention's keys and values filled at random, which costs what real ones do), then `--steps` single-token steps
at batch 1; the median step is reported. Models are timed in turn within each round, the best of the rounds kept.
With `--compile` the MFU table's models are compiled as a run with `compile=true` compiles them (model.compile(),
before the warm-up steps, which compile it) and its rows say so.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmzoo.models import TransformerConfig, preset_config
from lmzoo.models.base import sized
from lmzoo.models.cache import KVState
from lmzoo.training.acceleration import BF16_CPU_UNITS
from lmzoo.training.optim import OptimConfig, configure_adamw
from lmzoo.training.perf import cpu_flags, cpu_name, cpu_peak_flops

MODELS = ("gpt_rope", "mamba2", "gated_deltanet", "hybrid")
VOCAB = 65
# (width, block) of the MFU table, at batch MFU_BATCH.
MFU_SHAPES = ((128, 64), (384, 256))
MFU_BATCH = 16


def preset(name: str, block_size: int, target: float | None = None) -> TransformerConfig:
    return sized(preset_config(name, block_size=block_size, vocab_size=VOCAB, target_params=target))


def step_seconds(model, batch: int, block: int) -> float:
    idx = torch.randint(0, VOCAB, (batch, block))
    started = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(idx).logits.flatten(0, 1), idx.flatten())
    loss.backward()
    return time.perf_counter() - started


@torch.inference_mode()
def decode(model, context: int, steps: int) -> tuple[float, int]:
    """Median seconds of a single-token step after `context` tokens, and the cache's bytes then."""
    cache = model.new_cache()
    if cache.capacity is not None:
        cache.capacity = context + steps
    model(torch.zeros(1, 1, dtype=torch.long), cache)
    for layer, state in enumerate(cache.states):
        if isinstance(state, KVState):
            filled = KVState(context + steps)
            keys = torch.randn(1, state.keys.size(1), context, state.keys.size(3))
            filled.update(keys, torch.randn_like(keys), 0)
            cache.states[layer] = filled
    cache.position = context
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model(torch.zeros(1, 1, dtype=torch.long), cache)
        times.append(time.perf_counter() - started)
    return statistics.median(times), cache.nbytes()


def training_step(model, optimizer, tokens: torch.Tensor, bf16: bool,
                  loss_of: Callable[[], torch.Tensor] | None = None) -> float:
    """Seconds of one training step as a run takes it (in bf16 autocast as Lightning's bf16-mixed, or fp32): the
    next-token loss of `tokens`, or `loss_of()`, a batch's loss as the run computes it (a synthetic task's:
    LitLM.cross_entropy, over its answers alone)."""
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if loss_of is None:
            logits = model(tokens).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        else:
            loss = loss_of()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return time.perf_counter() - started


def mfu_table(rounds: int, compile: bool, widths: list[int]) -> None:
    """Each preset's training step at each MFU shape and precision: ms, tokens/s, MFU, and time against gpt_rope;
    compiled (`compile`) as a run with compile=true compiles its model."""
    precisions = ["fp32"] + (["bf16"] if set(BF16_CPU_UNITS) & cpu_flags() else [])
    print(f"\nMFU of a training step (batch {MFU_BATCH}, best of {rounds} rounds), against the peak a run's MFU uses: "
          + ", ".join(f"{name} {cpu_peak_flops(torch.bfloat16 if name == 'bf16' else torch.float32) / 1e9:.1f} GFLOP/s"
                      for name in precisions))
    print("\n| width, block | precision | model | parameters | FLOPs per token | ms per step | tokens/s | MFU "
          "| time vs gpt_rope |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for width, block in (shape for shape in MFU_SHAPES if shape[0] in widths):
        tokens = torch.randint(VOCAB, (MFU_BATCH, block))
        for precision in precisions:
            torch.manual_seed(0)
            models = {name: preset_config(name, block_size=block, vocab_size=VOCAB, n_embd=width).build()
                      for name in MODELS}
            if compile:
                for model in models.values():
                    model.compile()
            optimizers = {name: configure_adamw(model, OptimConfig(), torch.device("cpu"))["optimizer"]
                          for name, model in models.items()}
            for name in MODELS:
                for _ in range(2):
                    training_step(models[name], optimizers[name], tokens, precision == "bf16")
            best = {name: float("inf") for name in MODELS}
            for _ in range(rounds):
                for name in MODELS:
                    best[name] = min(best[name], training_step(models[name], optimizers[name], tokens, precision == "bf16"))
            peak = cpu_peak_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
            label = precision + (", compiled" if compile else "")
            for name in MODELS:
                flops = models[name].flops_per_token(block)
                rate = MFU_BATCH * block / best[name]
                print(f"| {width}, {block} | {label} | {name} | {models[name].parameter_counts().total:,} | "
                      f"{flops:,} | {best[name] * 1e3:.1f} | {rate:,.0f} | {rate * flops / peak:.1%} | "
                      f"{best[name] / best['gpt_rope']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["mfu", "train", "decode"], help="one table of the three")
    parser.add_argument("--compile", action="store_true", help="the MFU table's models compiled (compile=true)")
    parser.add_argument("--widths", type=int, nargs="+", default=[width for width, _ in MFU_SHAPES],
                        help="the MFU table's shapes of these widths only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; " + ", ".join(f"{flag} {'yes' if flag in cpu_flags() else 'no'}" for flag in BF16_CPU_UNITS)
          + f"; torch {torch.__version__}, {args.threads} thread(s)")
    if args.only in (None, "mfu"):
        mfu_table(args.rounds, args.compile, args.widths)
    if args.only == "mfu":
        return
    torch.manual_seed(0)
    target = preset("gpt_rope", 256).build().parameter_counts().total
    train = {name: preset(name, 256, target).build() for name in MODELS}
    longest = max(args.contexts) + args.steps
    decoders = {name: preset(name, longest, target).build().eval() for name in MODELS}
    print("parameters: " + ", ".join(f"{n} {m.parameter_counts().total:,}" for n, m in train.items()))

    if args.only in (None, "train"):
        best = {name: float("inf") for name in MODELS}
        for _ in range(args.rounds):
            for name, model in train.items():
                best[name] = min(best[name], step_seconds(model, 8, 256))
        print("\n| model | training step, batch 8 x 256 (s) | vs gpt_rope |\n| --- | --- | --- |")
        for name in MODELS:
            print(f"| {name} | {best[name]:.3f} | {best[name] / best['gpt_rope']:.2f} |")
    if args.only == "train":
        return

    print("\n| model | " + " | ".join(f"decode ms/token at {c:,}" for c in args.contexts) + " | "
          + " | ".join(f"cache bytes at {c:,}" for c in args.contexts) + " |")
    print("| --- " * (1 + 2 * len(args.contexts)) + "|")
    for name in MODELS:
        results = {}
        for context in args.contexts:
            runs = [decode(decoders[name], context, args.steps) for _ in range(args.rounds)]
            results[context] = (min(seconds for seconds, _ in runs), runs[0][1])
        print(f"| {name} | " + " | ".join(f"{results[c][0] * 1e3:.2f}" for c in args.contexts) + " | "
              + " | ".join(f"{results[c][1]:,}" for c in args.contexts) + " |")


if __name__ == "__main__":
    main()
