"""A training step of nanoGPT's Shakespeare config as lmzoo trains it (bench/vs_nanogpt.py --config shakespeare).

    python bench/shakespeare_step.py                   # best of 3 steps after 3, bf16 autocast, one thread
    python bench/shakespeare_step.py --fp32 --profile  # the operators that take the most CPU time in one step

The model is built from lmzoo's config with vs_nanogpt.py's overrides (6 layers, width 384, block 256, dropout
0.2, tinyshakespeare's 65 characters), and a step is what a run takes (bench/recurrent.py's training_step):
forward under bf16 autocast (as `trainer.precision=auto` chooses on a CPU with bf16 units), cross-entropy,
backward, clipping at 1.0 and lmzoo's fused AdamW, on random tokens at batch 16 (--batch-size). To compare two
versions of lmzoo, run it from each checkout in turn, alternating.
"""

import argparse

import torch
from common import compose_train
from hydra.utils import instantiate
from recurrent import training_step
from vs_nanogpt import CONFIGS

from lmzoo.training.optim import OptimConfig, configure_adamw

VOCAB = 65


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fp32", action="store_true", help="without bf16 autocast")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _, overrides, block, _ = CONFIGS["shakespeare"]
    model = instantiate(compose_train([*overrides, f"block_size={block}"]).model, vocab_size=VOCAB,
                        _convert_="all").build().train()
    optimizer = configure_adamw(model, OptimConfig(), torch.device("cpu"))["optimizer"]
    tokens = torch.randint(VOCAB, (args.batch_size, block))
    for _ in range(3):
        training_step(model, optimizer, tokens, not args.fp32)
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            training_step(model, optimizer, tokens, not args.fp32)
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    times = [training_step(model, optimizer, tokens, not args.fp32) for _ in range(3)]
    print(f"{'fp32' if args.fp32 else 'bf16 autocast'}, batch {args.batch_size} x {block}: best step "
          f"{min(times) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
