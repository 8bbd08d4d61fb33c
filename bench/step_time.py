"""Training step time of the zoo's transformers against `gpt`, per active parameter, in one process.

    python bench/step_time.py                      # --batch-sizes 12 32 --rounds 5 --steps 10 --threads 1
    python bench/step_time.py --models gpt,gpt_rope --profile gpt_rope

Each model at its default size (conf/model/, block 64, tinyshakespeare's 65 characters, embeddings tied) takes bare training
steps on random tokens: forward, cross-entropy (plus the routers' auxiliary loss), backward, gradient clipping
at 1.0 and AdamW as lmzoo configures it (fused). A round times `--steps` steps of every model in turn (the
order rotating each round) after 3 warm-up steps; a model's step time is the median over rounds of its
per-round mean. Printed per batch size: ms per step, active parameters, and the step time per active
parameter relative to gpt's (1.00 = as fast per active parameter; the goal is at most 1.10).
`--profile MODEL` prints the operators that take the most CPU time in 5 of its steps.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import compose_train
from hydra.utils import instantiate

from lmzoo.training.optim import OptimConfig, configure_adamw

TRANSFORMERS = ["gpt", "gpt_rope", "block_scaling", "moe", "moa_moe"]
VOCAB = 65


def build(name: str):
    # Every model tied, as every preset but gpt's: an untied head adds parameters that cost no more compute.
    cfg = compose_train([f"model={name}", "block_size=64", "model.tie_embeddings=true"])
    model = instantiate(cfg.model, vocab_size=VOCAB, _convert_="all").build()
    optimizer = configure_adamw(model, OptimConfig(), torch.device("cpu"))["optimizer"]
    return model, optimizer


def step(model, optimizer, x, y):
    output = model(x)
    loss = F.cross_entropy(output.logits.flatten(0, 1), y.flatten())
    if output.aux_loss is not None:
        loss = loss + output.aux_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(TRANSFORMERS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[12, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", metavar="MODEL")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.models.split(",")
    models = {name: build(name) for name in names}
    active = {name: models[name][0].parameter_counts()[1] for name in names}
    for batch_size in args.batch_sizes:
        x, y = torch.randint(VOCAB, (2, batch_size, 64))
        for name in names:
            for _ in range(3):
                step(*models[name], x, y)
        times = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(*models[name], x, y)
                times[name].append((time.perf_counter() - start) / args.steps)
        ms = {name: 1000 * statistics.median(times[name]) for name in names}
        print(f"\nbatch {batch_size} x 64, {args.threads} thread(s), {args.rounds} rounds of {args.steps} steps")
        print(f"{'model':14s} {'ms/step':>8s} {'active params':>14s} {'vs gpt per active param':>24s}")
        for name in names:
            relative = (ms[name] / active[name]) / (ms["gpt"] / active["gpt"]) if "gpt" in ms else float("nan")
            print(f"{name:14s} {ms[name]:8.1f} {active[name]:14,d} {relative:24.2f}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        x, y = torch.randint(VOCAB, (2, args.batch_sizes[0], 64))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step(*models[args.profile], x, y)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
