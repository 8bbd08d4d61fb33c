"""bench/gpu.py and bench/gpu_data.py on a CPU: the data folder a GPU machine gets, the FLOP count, the
arguments, nanoGPT's command and log, and a tiny measurement. The GPU numbers come from a GPU machine
(bench/README.md says how)."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tiktoken
import torch
from helpers import REPO, SHARED, V
from hydra.utils import instantiate
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmzoo.data import prepare
from lmzoo.models import preset_config
from lmzoo.models.routing import MoE

sys.path.insert(0, str(REPO / "bench"))
import gpu  # noqa: E402
import gpu_data  # noqa: E402
from common import compose_train  # noqa: E402

CPU = torch.device("cpu")
TINY_RANDOM = ["--device", "cpu", "--tiny", "--data", "random"]


def same_file(path, stat) -> bool:
    """`path` is still the file `stat` described: not rewritten, not replaced."""
    now = path.stat()
    return (now.st_ino, now.st_mtime_ns, now.st_size) == (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def test_the_data_folder_holds_gpt2_tokens_that_lmzoo_takes_as_they_are(tmp_path):
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    shutil.copytree(SHARED / "tiktoken-cache", shared / "tiktoken-cache")
    texts = [(SHARED / "data" / name).read_text(encoding="utf-8")[:40_000] for name in gpu_data.CORPORA]
    for name, text in zip(gpu_data.CORPORA, texts):
        (shared / "data" / name).write_text(text, encoding="utf-8")
    checkout = tmp_path / "nanoGPT"
    checkout.mkdir()
    for name in [*gpu_data.NANOGPT_FILES, "sample.py"]:
        (checkout / name).write_text(f"# {name}\n")
    out = tmp_path / "gpu-data"
    gpu_data.main(["--out", str(out), "--shared", str(shared), "--nanogpt", str(checkout)])

    corpus = (out / "corpus.txt").read_text(encoding="utf-8")
    assert corpus == "\n\n".join(texts)
    # Flat uint16 ids, as nanoGPT's get_batch reads them; together they are the whole corpus.
    bins = gpu_data.corpus_bins(out)
    train, val = (np.memmap(bins / f"{split}.bin", dtype=np.uint16, mode="r") for split in ("train", "val"))
    encoding = tiktoken.get_encoding("gpt2")
    assert encoding.decode(train.tolist()) + encoding.decode(val.tolist()) == corpus
    assert (out / "shared" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8") == texts[0]
    assert {path.name for path in (out / "shared" / "tiktoken-cache").iterdir()} == {
        path.name for path in (SHARED / "tiktoken-cache").iterdir()}
    assert sorted(path.name for path in (out / "nanogpt").iterdir()) == sorted(gpu_data.NANOGPT_FILES)

    # The runs on the GPU machine compose the same data settings and find the bins complete.
    before = (bins / "train.bin").stat()
    meta = prepare(instantiate(compose_train(gpu_data.corpus_overrides(out)).data, _convert_="all"))
    assert meta.splits["train"].tokens == len(train) and same_file(bins / "train.bin", before)


def test_random_tokens_are_bins_that_lmzoo_and_nanogpt_read(tmp_path):
    bins = gpu.write_random_tokens(tmp_path, tokens=4096)
    before = (bins / "train.bin").stat()
    meta = prepare(instantiate(compose_train(gpu.random_overrides(tmp_path)).data, _convert_="all"))
    train = np.memmap(bins / "train.bin", dtype=np.uint16, mode="r")
    assert meta.splits["train"].tokens == len(train) == 4096 and same_file(bins / "train.bin", before)
    assert meta.vocab_size == 50257 and train.max() < 50257


def moe_flops(top_k: int) -> float:
    torch.manual_seed(0)
    model = preset_config("moe", vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32,
                          ffns={MoE.name: dict(n_experts=4, top_k=top_k)}).build()
    return gpu.flops_per_token(model, 16, CPU)


def test_flops_count_forward_and_backward_and_only_the_experts_a_token_uses():
    model = preset_config("gpt", vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32).build()
    with FlopCounterMode(display=False) as forward, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        model(torch.randint(0, V, (1, 32)))
    # The backward pass costs twice the forward.
    assert gpu.flops_per_token(model, 32, CPU) == 3 * forward.get_total_flops() / 32
    # Attention is counted: a token's share grows with the context.
    assert gpu.flops_per_token(model, 32, CPU) > gpu.flops_per_token(model, 16, CPU)
    # Each expert a token uses adds the same FLOPs; the unused ones add none.
    one, two, three = moe_flops(1), moe_flops(2), moe_flops(3)
    assert one < two and two - one == three - two


def test_peaks_come_from_the_table_by_device_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 PCIe")
    assert gpu.peak_flops(torch.device("cuda"), None) == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert gpu.peak_flops(torch.device("cuda"), None) == 989.4e12
    assert gpu.peak_flops(torch.device("cuda"), 5e14) == 5e14
    assert gpu.peak_flops(CPU, None) is None


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")


@pytest.mark.parametrize("argv, message", [
    pytest.param([], "no CUDA GPU here; for a smoke run on this machine pass --device cpu --tiny", marks=no_cuda),
    (["--device", "cpu"], "--device cpu runs only with --tiny"),
    (["nanogpt", *TINY_RANDOM], "the nanogpt part needs --nanogpt DIR"),
    (["zo", *TINY_RANDOM], "zo is not a part; choose from nanogpt, zoo, sampling"),
    (["zoo", "--device", "cpu", "--tiny", "--data-dir", "/nowhere"], "no prepared corpus in /nowhere; run python "
                                                                        "bench/gpu_data.py first"),
    (["zoo", *TINY_RANDOM, "--profile"], "--profile writes into --out DIR"),
    (["zoo", *TINY_RANDOM, "--steps", "0"], "--steps must be positive"),
    (["zoo", *TINY_RANDOM, "--models", "gpt,moe2"], f"--models takes {', '.join(gpu.ZOO)}; not moe2"),
])
def test_a_mistaken_argument_is_one_line_naming_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        gpu.parse(argv)
    assert stopped.value.code == 2 and f"error: {message}" in capsys.readouterr().err


def test_nanogpt_runs_from_a_copy_on_the_same_tokens_and_its_iteration_times_are_read(tmp_path):
    """A stand-in for nanoGPT's train.py checks the folder it runs in and prints iterations as train.py does."""
    checkout = tmp_path / "nanoGPT"
    checkout.mkdir()
    (checkout / "train.py").write_text(textwrap.dedent("""
        import os, sys
        import numpy as np
        tokens = np.memmap(os.path.join("data", "lmzoo", "train.bin"), dtype=np.uint16, mode="r")
        assert len(tokens) == 4096 and os.path.isfile("model.py") and os.path.isfile("configurator.py")
        assert "--batch_size=4" in sys.argv and "--gradient_accumulation_steps=2" in sys.argv
        max_iters = int(next(arg for arg in sys.argv if arg.startswith("--max_iters=")).split("=")[1])
        for iteration in range(max_iters + 1):
            print(f"iter {iteration}: loss 10.9, time {1000 if iteration < 2 else 500:.2f}ms, mfu -100.00%")
    """))
    for name in ("model.py", "configurator.py"):
        (checkout / name).write_text("")
    bins = gpu.write_random_tokens(tmp_path, tokens=4096)
    args = gpu.parse(["zoo", *TINY_RANDOM, "--nanogpt", str(checkout), "--warmup", "2", "--steps", "2"])
    result = gpu.nanogpt_run(args, bins, micro_batch=4)
    assert result == {"micro_batch": 4, "accumulation": 2, "tokens_per_sec": 8 * 64 / 0.5}
    assert sorted(path.name for path in checkout.iterdir()) == ["configurator.py", "model.py", "train.py"]


def test_the_gpt_measured_against_nanogpt_is_tied_as_nanogpts_model():
    assert gpu.compose_train(gpu.Shape(tiny=False).overrides("gpt")).model.tie_embeddings is True


def test_a_tiny_lmzoo_measurement_on_cpu(tmp_path):
    gpu.write_random_tokens(tmp_path, tokens=2**14)
    args = gpu.parse(["--worker", "lmzoo", "--model", "moe", *TINY_RANDOM, "--data-dir", str(tmp_path),
                      "--warmup", "1", "--steps", "2"])
    result = gpu.lmzoo_worker(args)
    assert (result["micro_batch"], result["accumulation"]) == (4, 2) and result["tokens_per_sec"] > 0
    assert result["active_parameters"] < result["parameters"] and result["flops_per_token"] > 0
    assert result["mfu"] is None and not result["flash_attention"]


@pytest.mark.slow
def test_the_whole_bench_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "bench" / "gpu.py"), "zoo", "sampling", *TINY_RANDOM, "--warmup", "1",
               "--steps", "1", "--profile", "--out", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results["zoo"]) == gpu.ZOO and [row["batch"] for row in results["sampling"]["rows"]] == [1, 32]
    assert all(row["tokens_per_sec"] > 0 for row in results["zoo"].values())
    assert all(f"{name}: optimizer step 2" in (out / "profiles.txt").read_text() for name in gpu.ZOO)
    traces = sorted(path.name for path in out.glob("trace-*.json.gz"))
    assert traces == [f"trace-{name}.json.gz" for name in sorted(gpu.ZOO)]
