import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"

# Tests never touch the network: tokenizer files and data come from ../shared.
os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken-cache")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Tiny models gain nothing from threads, and threads fighting over 2 cores slow them down many times.
os.environ["OMP_NUM_THREADS"] = "1"

TINY = [
    "trainer=debug",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "block_size=32",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "sample_tokens=0",
]


def compose_train(tmp_path: Path, *overrides: str, tiny: bool = True):
    """The real train config with tiny, offline overrides, writing under tmp_path."""
    base = [f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'run'}"]
    with initialize_config_module(config_module="lmzoo.conf", version_base="1.3"):
        return compose(config_name="train", overrides=base + (TINY if tiny else []) + list(overrides))


@pytest.fixture(scope="session", autouse=True)
def shared_files_present():
    if not SHAKESPEARE.is_file():
        pytest.exit(f"{SHAKESPEARE} is missing: the tests read data from ../shared beside the repository")
