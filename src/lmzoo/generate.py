"""python -m lmzoo.generate ckpt=PATH [prompt=...] [max_new_tokens=500] [temperature=0.8] [top_k=50] ..."""

import sys

import hydra
import torch
from omegaconf import DictConfig

from lmzoo.checkpoint import load_model
from lmzoo.errors import UserError, report_user_errors
from lmzoo.sampling import generate, start_ids, stream_text


@hydra.main(config_path="pkg://lmzoo.conf", config_name="generate", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> None:
    if cfg.temperature < 0:
        raise UserError(f"temperature must be >= 0, got {cfg.temperature}")
    if cfg.top_k is not None and cfg.top_k <= 0:
        raise UserError(f"top_k must be a positive integer or null, got {cfg.top_k}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model, tokenizer, _ = load_model(cfg.ckpt, device)
    prompt = torch.tensor([start_ids(tokenizer, cfg.prompt)], device=device)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    for sample in range(cfg.num_samples):
        if sample:
            print("\n---------------")
        sys.stdout.write(cfg.prompt)
        tokens = generate(model, prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.kv_cache, generator)
        for piece in stream_text(tokenizer, (token.item() for token in tokens)):
            sys.stdout.write(piece)
            sys.stdout.flush()
    print()


if __name__ == "__main__":
    main()
