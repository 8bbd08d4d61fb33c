import os

# Before torch is imported: tiny models gain nothing from threads, and threads fighting over 2 cores slow
# them down many times. Tests never touch the network: tokenizer files and data come from ../shared.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
from helpers import SHAKESPEARE, SHARED  # noqa: E402

os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken-cache")


@pytest.fixture(scope="session", autouse=True)
def shared_files_present():
    if not SHAKESPEARE.is_file():
        pytest.exit(f"{SHAKESPEARE} is missing: the tests read data from ../shared beside the repository")
