"""LoRA against full fine-tuning: trainable parameters, optimizer state, and training step time, in one run.

python bench/lora.py [--device cpu|cuda] [--steps 10] [--n-layer 4] [--n-embd 256]
"""

import argparse
import time

import torch
import torch.nn.functional as F

from lmzoo.models import preset_config
from lmzoo.models.lora import LoRA
from lmzoo.training.optim import OptimConfig, configure_adamw


def measure(model, batch, steps: int) -> dict:
    optimizer = configure_adamw(model, OptimConfig(lr=1e-4), batch[0].device)["optimizer"]
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        x, y = batch
        F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten()).backward()
        optimizer.step()

    step()  # allocates the optimizer state
    sync(batch[0].device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(batch[0].device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim() > 0)
    return {"trainable": trainable, "optimizer_mb": state / 2**20, "step_s": (time.perf_counter() - start) / steps}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)

    def fresh():
        torch.manual_seed(0)
        config = preset_config("gpt", vocab_size=50257, block_size=args.block_size, n_layer=args.n_layer,
                               n_head=max(1, args.n_embd // 64), n_embd=args.n_embd, tie_embeddings=True, init="gpt2")
        return config.build().to(device)

    x = torch.randint(0, 50257, (args.batch_size, args.block_size + 1), device=device)
    batch = (x[:, :-1], x[:, 1:])
    full = measure(fresh(), batch, args.steps)
    lora = measure(LoRA(r=args.rank, alpha=2 * args.rank).apply(fresh()), batch, args.steps)
    print(f"GPT n_layer={args.n_layer} n_embd={args.n_embd} vocab 50257, batch {args.batch_size}x{args.block_size}, "
          f"LoRA r={args.rank} on qkv, proj, mlp; {args.device}, {args.steps} steps")
    print("| | full fine-tuning | LoRA | LoRA / full |\n| --- | --- | --- | --- |")
    for key, label, form in [("trainable", "trainable parameters", ",d"), ("optimizer_mb", "AdamW state (MiB)", ".1f"),
                             ("step_s", "step time (s)", ".3f")]:
        print(f"| {label} | {full[key]:{form}} | {lora[key]:{form}} | {lora[key] / full[key]:.3f} |")


if __name__ == "__main__":
    main()
