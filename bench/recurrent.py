"""Recurrent mixers against attention: training step time at equal parameters, and decode time and memory per
token as the context grows, where attention's cache grows and a recurrent state does not.

    python bench/recurrent.py [--contexts 1024 4096 16384] [--steps 32] [--threads 1]

Random-init models from conf/model/ (gpt_rope, mamba2, gated_deltanet, hybrid), each sized to gpt_rope's
parameters with model.target_params. Decoding at context L: a cache holding L tokens (attention's keys and
values filled at random, which costs what real ones do), then `--steps` single-token steps at batch 1; the
median step is reported. Models are timed in turn within each round, the best of the rounds kept.
"""

import argparse
import statistics
import time

import torch

from lmzoo.models import TransformerConfig, preset_config
from lmzoo.models.base import sized
from lmzoo.models.cache import KVState

MODELS = ("gpt_rope", "mamba2", "gated_deltanet", "hybrid")
VOCAB = 65


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    target = preset("gpt_rope", 256).build().parameter_counts().total
    train = {name: preset(name, 256, target).build() for name in MODELS}
    longest = max(args.contexts) + args.steps
    decoders = {name: preset(name, longest, target).build().eval() for name in MODELS}
    print("parameters: " + ", ".join(f"{n} {m.parameter_counts().total:,}" for n, m in train.items()))

    best = {name: float("inf") for name in MODELS}
    for _ in range(args.rounds):
        for name, model in train.items():
            best[name] = min(best[name], step_seconds(model, 8, 256))
    print("\n| model | training step, batch 8 x 256 (s) | vs gpt_rope |\n| --- | --- | --- |")
    for name in MODELS:
        print(f"| {name} | {best[name]:.3f} | {best[name] / best['gpt_rope']:.2f} |")

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
