"""The attention variants against gpt_rope at the same width: training step time, decoding time per token and
KV-cache bytes per token at 1k and 8k tokens of context.

    OMP_NUM_THREADS=1 python bench/attention.py      # --rounds 3 --steps 5 --new-tokens 200

Each preset at its default size (conf/model/: 4 layers, width 128, 4 heads; block 64, 65 characters, tied),
random weights. Step: a training step as bench/step_time.py takes it (batch 12 x 64), the median over rounds of
each round's mean, the models taken in turn in each round. Decode: greedy sampling of `--new-tokens` tokens from a
one-token prompt at batch 1 with the KV cache (refilled from the last half context every 32 tokens, as for
every model with a full-attention layer), best of the rounds. KV bytes: what the cache of one sequence holds at
that context in fp32, from the layers' own count (Transformer.cache_values), per token.
"""

import argparse
import statistics
import time

import torch
from step_time import VOCAB, build, step

from lmzoo.inference.sampling import SamplingSettings, generate

PRESETS = ["gpt_rope", "qk_norm", "swa", "mla", "diff_attn"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    models = {name: build(name) for name in PRESETS}
    x, y = torch.randint(VOCAB, (2, 12, 64))
    steps = {name: [] for name in PRESETS}
    decodes = {name: [] for name in PRESETS}
    settings = SamplingSettings(max_new_tokens=args.new_tokens, temperature=0)
    for name in PRESETS:
        step(*models[name], x, y)
    for round_ in range(args.rounds):
        for name in PRESETS[round_ % len(PRESETS):] + PRESETS[: round_ % len(PRESETS)]:
            model, optimizer = models[name]
            model.train()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer, x, y)
            steps[name].append((time.perf_counter() - start) / args.steps)
            model.eval()
            start = time.perf_counter()
            for _ in generate(model, torch.zeros(1, 1, dtype=torch.long), settings):
                pass
            decodes[name].append((time.perf_counter() - start) / args.new_tokens)
    print(f"{'model':10s} {'step ms':>8s} {'vs':>5s} {'decode ms/token':>16s} {'vs':>5s} {'KV B/token 1k':>14s} "
          f"{'KV B/token 8k':>14s}")
    base_step, base_decode = statistics.median(steps["gpt_rope"]), min(decodes["gpt_rope"])
    for name in PRESETS:
        model = models[name][0]
        step_ms, decode_ms = statistics.median(steps[name]), min(decodes[name])
        kv = [4 * model.cache_values(context) / context for context in (1024, 8192)]
        print(f"{name:10s} {1000 * step_ms:8.1f} {step_ms / base_step:5.2f} {1000 * decode_ms:16.2f} "
              f"{decode_ms / base_decode:5.2f} {kv[0]:14,.0f} {kv[1]:14,.0f}")


if __name__ == "__main__":
    main()
