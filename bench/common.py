"""Config composition shared by the benchmark scripts.

The scripts measure the checkout they sit in: its src/ goes first on sys.path and its conf/ is
composed directly, whichever copy of lmzoo the Python environment has installed.
"""

import sys
from pathlib import Path

from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
# The shared data folder sits beside the repository; the text is never copied into it.
SHARED = REPO.parent / "shared"
TINYSHAKESPEARE = SHARED / "data/tinyshakespeare.txt"

# nanoGPT's documented CPU run (README, "I only have a macbook"): a baby GPT on shakespeare_char.
NANOGPT_CPU = [
    "data=shakespeare_char",
    "model.n_layer=4",
    "model.n_head=4",
    "model.n_embd=128",
    "model.dropout=0.0",
    "block_size=64",
    "data.batch_size=12",
    "optim.lr=1e-3",
    "optim.min_lr=1e-4",
    "optim.warmup_steps=100",
]


def compose_train(overrides: list[str]):
    """The installed lmzoo's `train` config with `overrides` (the package lmzoo.conf, whose import registers the
    architectures' nodes that the presets extend; the conf folder read as files would lack them)."""
    with initialize_config_module(config_module="lmzoo.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def train_config(workdir: Path, overrides: list[str]):
    """The `train` config with data and outputs under `workdir`, nanoGPT's CPU settings, then `overrides`."""
    return compose_train([
        f"data.path={TINYSHAKESPEARE}",
        f"paths.data_dir={workdir / 'data'}",
        f"paths.output_dir={workdir / 'run'}",
        "sample_tokens=0",
        *NANOGPT_CPU,
        *overrides,
    ])
