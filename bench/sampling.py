"""Sampling speed: tokens/s at 500 new tokens, with the KV cache against without it; and the cost of
streaming text against generating the same tokens without decoding them. Each taken in one run.

    python bench/sampling.py [--new-tokens 500] [--stream-tokens 5000] [--threads 1] [--repeats 5]

Random-init models are enough for speed. Two sizes: nanoGPT's CPU model (4 layers, width 128,
block 64) and a larger one (6 layers, width 384, block 256), each at batch 1 and batch 8. Where
`transformers` is installed, Hugging Face GPT-2 `generate()` of the same size is timed too.
"""

import argparse
import os
import time
from pathlib import Path

import torch

from lmzoo.data import CharTokenizer, TiktokenTokenizer
from lmzoo.inference.sampling import SamplingSettings, complete, generate
from lmzoo.models import preset_config

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
    settings = SamplingSettings(max_new_tokens=new_tokens, kv_cache=kv_cache)
    return lambda: [None for _ in generate(model, prompt, settings, generator=generator)]


def streaming(model, tokenizer, new_tokens: int):
    """The same sampling twice: tokens only, and streamed as text (decoded as they come)."""
    settings = SamplingSettings(max_new_tokens=new_tokens, stop_at_eot=False)
    prompt = tokenizer.encode("\n")

    def tokens():
        return [None for _ in generate(model, [prompt], settings, generator=torch.Generator().manual_seed(0))]

    def text():
        return [None for _ in complete(model, tokenizer, ["\n"], settings, generator=torch.Generator().manual_seed(0))]

    return {"tokens": tokens, "text": text}


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
    parser.add_argument("--stream-tokens", type=int, default=5000)
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
        model = preset_config("gpt", vocab_size=VOCAB, **size, tie_embeddings=True, init="gpt2").build().eval()
        for batch in (1, 8):
            runs = {"cached": ours(model, batch, args.new_tokens, True), "uncached": ours(model, batch, args.new_tokens, False)}
            if with_hf:
                runs["hf"] = hugging_face(size, batch, args.new_tokens)
            rates = tokens_per_second(runs, batch, args.new_tokens, args.repeats)
            row = f"| {name} | {batch} | {rates['cached']:,.0f} | {rates['uncached']:,.0f} | "
            row += f"{rates['cached'] / rates['uncached']:.1f}x |" + (f" {rates['hf']:,.0f} |" if with_hf else "")
            print(row, flush=True)

    print(f"\nStreaming {args.stream_tokens} tokens as text against generating them without text, batch 1, "
          "4 layers, width 128, block 64, cached")
    print("| tokenizer | tokens only, tok/s | streamed text, tok/s | text / tokens time |\n| --- | --- | --- | --- |")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(__file__).resolve().parents[2] / "shared/tiktoken-cache"))
    for tokenizer in (CharTokenizer("\n" + "".join(chr(32 + i) for i in range(VOCAB - 1))), TiktokenTokenizer("gpt2")):
        torch.manual_seed(0)
        size = SIZES["4 layers, width 128, block 64"]
        model = preset_config("gpt", vocab_size=tokenizer.vocab_size, **size, tie_embeddings=True, init="gpt2").build().eval()
        rates = tokens_per_second(streaming(model, tokenizer, args.stream_tokens), 1, args.stream_tokens, args.repeats)
        name = tokenizer.spec.get("name") or tokenizer.spec["kind"]
        print(f"| {name} | {rates['tokens']:,.0f} | {rates['text']:,.0f} | {rates['tokens'] / rates['text']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
