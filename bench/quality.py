"""Validation loss of gpt and gpt_rope on tinyshakespeare (char) at nanoGPT's CPU configuration.

nanoGPT's README trains a 4-layer, 4-head, 128-wide model with block_size 64 and batch_size 12
for 2000 iterations on a CPU (lr 1e-3 -> 1e-4 cosine over 2000 steps, 100 warmup, dropout 0)
and reports a validation loss of 1.88. This script trains both lmzoo architectures that way (each at its
preset's defaults: `gpt` unties the embeddings nanoGPT ties, bench/README.md §8),
validating every 250 steps on 200 batches (2400 fixed windows), and checks the bar:
gpt's best val loss <= 1.89, and gpt_rope's below gpt's. Exits 1 if the bar is not met.

    OMP_NUM_THREADS=1 /tmp/venv/bin/python bench/quality.py   # one thread: the loss does not depend on speed
"""

import sys
import tempfile
import time
from pathlib import Path

from common import train_config

from lmzoo.training.run import train

GPT_BAR = 1.89
RUN = ["trainer.max_steps=2000", "trainer.val_check_interval=250", "data.val_batches=200",
       "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def main() -> int:
    results = {}
    with tempfile.TemporaryDirectory(prefix="lmzoo-quality-") as workdir:
        for model in ("gpt", "gpt_rope"):
            started = time.perf_counter()
            result = train(train_config(Path(workdir) / model, [f"model={model}", *RUN]))
            results[model] = (result["best_val_loss"], result["steps"], time.perf_counter() - started)

    print(f"\n{'model':<10} {'steps':>6} {'best val loss':>14} {'minutes':>8}")
    for model, (loss, steps, seconds) in results.items():
        print(f"{model:<10} {steps:>6} {loss:>14.4f} {seconds / 60:>8.1f}")
    gpt, rope = results["gpt"][0], results["gpt_rope"][0]
    checks = {f"gpt <= {GPT_BAR}": gpt <= GPT_BAR, "gpt_rope < gpt": rope < gpt}
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
