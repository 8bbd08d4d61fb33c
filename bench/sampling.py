"""Sampling speed: tokens/s at 500 new tokens, with the KV cache against without it, in one run.

    python bench/sampling.py [--new-tokens 500] [--threads 1] [--repeats 5]

Random-init models are enough for speed. Two sizes: nanoGPT's CPU model (4 layers, width 128,
block 64) and a larger one (6 layers, width 384, block 256), each at batch 1 and batch 8. Where
`transformers` is installed, Hugging Face GPT-2 `generate()` of the same size is timed too.
"""

import argparse
import time

import torch

from lmzoo.models import GPT
from lmzoo.sampling import generate

SIZES = {
    "4 layers, width 128, block 64": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "6 layers, width 384, block 256": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
}
VOCAB = 65


def tokens_per_second(runs: dict, batch: int, new_tokens: int, repeats: int, budget: float = 30.0) -> dict:
    """Tokens/s of each run, best of up to `repeats` rounds taken in turn: the machine is shared, and
    the fastest round is the least disturbed. Rounds stop once a round has taken `budget` seconds."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        started_round = time.perf_counter()
        for name, step_through in runs.items():
            started = time.perf_counter()
            step_through()
            best[name] = min(best[name], time.perf_counter() - started)
        if time.perf_counter() - started_round > budget:
            break
    return {name: batch * new_tokens / seconds for name, seconds in best.items()}


def ours(model, batch: int, new_tokens: int, kv_cache: bool):
    prompt = torch.zeros(batch, 1, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    return lambda: [None for _ in generate(model, prompt, new_tokens, 1.0, kv_cache=kv_cache, generator=generator)]


def hugging_face(size: dict, batch: int, new_tokens: int):
    """GPT-2 of the same shape; its learned positions must cover the whole text, since it cannot slide."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=new_tokens + 1, n_embd=size["n_embd"],
                        n_layer=size["n_layer"], n_head=size["n_head"], bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(config).eval()
    prompt = torch.zeros(batch, 1, dtype=torch.long)

    def run():
        with torch.no_grad():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                           do_sample=True, top_k=0, pad_token_id=0)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import transformers  # noqa: F401
        with_hf = True
    except ImportError:
        with_hf = False
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.new_tokens} new tokens, best of up to {args.repeats}")
    print("| model | batch | cached tok/s | uncached tok/s | cached / uncached |" + (" HF generate() tok/s |" if with_hf else ""))
    print("| --- | --- | --- | --- | --- |" + (" --- |" if with_hf else ""))
    for name, size in SIZES.items():
        torch.manual_seed(0)
        model = GPT(vocab_size=VOCAB, **size).eval()
        for batch in (1, 8):
            runs = {"cached": ours(model, batch, args.new_tokens, True), "uncached": ours(model, batch, args.new_tokens, False)}
            if with_hf:
                runs["hf"] = hugging_face(size, batch, args.new_tokens)
            rates = tokens_per_second(runs, batch, args.new_tokens, args.repeats)
            row = f"| {name} | {batch} | {rates['cached']:,.0f} | {rates['uncached']:,.0f} | "
            row += f"{rates['cached'] / rates['uncached']:.1f}x |" + (f" {rates['hf']:,.0f} |" if with_hf else "")
            print(row, flush=True)


if __name__ == "__main__":
    main()
