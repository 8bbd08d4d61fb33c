"""Local attention's time against its FLOPs: a training step (forward and backward) of gpt_rope, swa (local
layers of a 16-token window between global ones) and swa's local layer alone in every layer, at each block size,
with the FLOPs per token each is charged (LanguageModel.flops_per_token).

    OMP_NUM_THREADS=1 python bench/local_attention.py      # --blocks 256 1024 --tokens 4096 --rounds 5

Each preset at its default size (conf/model/: 4 layers, width 128, 4 heads; 65 characters), random weights, a batch
of --tokens tokens (16 x 256, 4 x 1024); the median over rounds of each model's step, the models taken in turn in
each round. It reads only lmzoo's public API, so the same file times an older checkout (run it from there).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lmzoo.models import preset_config

# Name: (preset, settings over it).
MODELS = {"gpt_rope": ("gpt_rope", {}), "swa": ("swa", {}),
          "local only": ("swa", dict(layer_pattern=["local_attention"]))}
VOCAB = 65


def step_seconds(model, idx: torch.Tensor) -> float:
    started = time.perf_counter()
    F.cross_entropy(model(idx).logits.flatten(0, 1), idx.flatten()).backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{'block':>5s} {'model':10s} {'step ms':>8s} {'vs':>5s} {'MFLOPs/token':>12s} {'vs':>5s}")
    for block in args.blocks:
        models = {name: preset_config(preset, vocab_size=VOCAB, block_size=block, **settings).build().train()
                  for name, (preset, settings) in MODELS.items()}
        idx = torch.randint(VOCAB, (args.tokens // block, block))
        times = {name: [] for name in models}
        for name, model in models.items():
            step_seconds(model, idx)
        for round_ in range(args.rounds):
            names = list(models)
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                times[name].append(step_seconds(models[name], idx))
        base_ms, base_flops = 1000 * statistics.median(times["gpt_rope"]), models["gpt_rope"].flops_per_token(block)
        for name, model in models.items():
            ms, flops = 1000 * statistics.median(times[name]), model.flops_per_token(block)
            print(f"{block:5d} {name:10s} {ms:8.1f} {ms / base_ms:5.2f} {flops / 1e6:12.3f} {flops / base_flops:5.2f}")


if __name__ == "__main__":
    main()
