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


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu need CUDA: without it they are skipped (select them with -m gpu on a GPU machine)."""
    import torch

    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def the_same_machine_everywhere(monkeypatch, tmp_path_factory):
    """Every test sees a CPU without native bf16 units (tests that need them fake them) and lmzoo's cache of a
    fresh machine, shared by the session (the peak FLOP/s probed once; compile records only of real compiles,
    which compile=auto finds too long to repay in a test's run), so that precision=auto and compile=auto choose
    alike on any machine. A test that fakes a compile keeps its record in a cache of its own."""
    from lmzoo.training import acceleration, perf

    monkeypatch.setattr(acceleration, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(perf, "cache_dir", lambda: tmp_path_factory.getbasetemp() / "lmzoo-cache")


@pytest.fixture
def nan_loss_at_steps(monkeypatch):
    """The loss of the batches at the given steps becomes NaN, as after a bad batch."""
    from lmzoo.training.module import LitLM

    def inject(*steps):
        cross_entropy = LitLM.cross_entropy

        def poisoned(self, batch):
            value, output = cross_entropy(self, batch)
            if self.training and self.trainer.global_step in steps:
                value = value * float("nan")
            return value, output

        monkeypatch.setattr(LitLM, "cross_entropy", poisoned)

    return inject
