"""Training and sampling throughput on one CUDA GPU, and lmzoo against nanoGPT's train.py on the same GPU.

    python bench/gpu.py [nanogpt] [zoo] [sampling] [--nanogpt DIR] [--data corpus|random] [--pairs 2]
                        [--warmup 3] [--steps 8] [--micro-batch N] [--profile] [--out DIR]
    python bench/gpu.py --device cpu --tiny ...        a smoke run of the same code on a CPU, with a tiny model

Parts (all three by default):
- nanogpt: GPT-2 124M (12 layers, 12 heads, width 768, block 1024, vocabulary 50304) as `model=gpt` (with
  `model.tie_embeddings=true`: GPT-2's and nanoGPT's tie, where `gpt`'s default is untied), bf16-mixed,
  torch.compile, attention through SDPA (flash attention where the GPU has it), the largest micro-batch that
  fits and gradient accumulation to 0.5M tokens a step. The same model and batch in nanoGPT's train.py (from
  --nanogpt DIR: train.py, model.py and configurator.py are copied to a temporary folder and run there), in
  alternation: lmzoo first in odd pairs, nanoGPT first in even ones. Tokens/s, the median of the per-pair
  ratios, and lmzoo's MFU.
- zoo: every preset of conf/model/ with a depth and a width (all but bigram and mlp today), at GPT-2 124M's: gpt as
  GPT-2 124M itself, the others at their own head size (their config's with_width): tokens/s and MFU (--models
  picks some).
- sampling: the 124M model in bf16, tokens/s at batch 1 and 32 sampling 500 tokens, with and without the KV cache.

Each training measurement is a process of its own, so every run starts with a cold GPU, its own compile and
no memory left by another. lmzoo trains through `trainer.fit`, with the callbacks and logger its config builds
(validation and checkpointing moved out of the way). A step's time is taken between optimizer steps, the device
synchronized at each (nanoGPT's per-iteration time, which its loss.item() synchronizes, is the same); tokens/s
is a step's tokens over the median of the steps after --warmup. The micro-batch: the largest power of two
dividing the global batch whose eager step (forward, backward, AdamW; lmzoo's perf/max_memory_gb) peaks below
90% of the GPU's memory (a compiled step takes no more).
MFU: model FLOPs per token, counted by PyTorch's FlopCounterMode on one real forward and backward (attention
counted in full, causal or not, as nanoGPT's estimate does), times tokens/s, over the GPU's dense bf16 peak.

Data: --data corpus (default) reads GPT-2 tokens of the shared corpora that bench/gpu_data.py prepared in
.gpu-data/corpus (train.bin and val.bin, nanoGPT's format, read by both programs); --data random writes uniformly
random token ids, for pure throughput. --out DIR writes results.json, and with --profile a torch.profiler table
and Chrome trace of one lmzoo step per model.
"""

import argparse
import gc
import gzip
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from common import REPO, compose_train
from gpu_data import NANOGPT_FILES, corpus_bins, corpus_overrides
from hydra.utils import instantiate
from sampling import tokens_per_second
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmzoo.data.bins import fingerprint
from lmzoo.data.source import sha256_of_files
from lmzoo.inference.sampling import SamplingSettings, generate
from lmzoo.models import preset_config
from lmzoo.models.presets import model_overrides, preset, preset_names, resized
from lmzoo.training.perf import peak_flops as lmzoo_peak_flops
from lmzoo.training.run import build

PARTS = ["nanogpt", "zoo", "sampling"]
# The presets with a depth and a width to set: the zoo the tests take from conf/model/.
ZOO = [name for name in preset_names()
       if "n_layer" in {field.name for field in fields(preset(name).config_class)} and preset(name).config_class.width_field]
GOAL_MFU, GOAL_RATIO = 0.5, 1.0
MEMORY_FRACTION = 0.9


class Shape:
    """The measured model's size: GPT-2 124M, or with --tiny a 2-layer model that a CPU runs in seconds."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.layers, self.heads, self.width = (2, 2, 64) if tiny else (12, 12, 768)
        self.block = 64 if tiny else 1024
        self.tokens_per_step = 8 * self.block if tiny else 2**19
        self.new_tokens = 20 if tiny else 500

    @property
    def sequences_per_step(self) -> int:
        return self.tokens_per_step // self.block

    def __str__(self) -> str:
        return (f"{'a tiny GPT-2' if self.tiny else 'GPT-2 124M'} ({self.layers} layers, {self.heads} heads, width "
                f"{self.width}, block {self.block}, vocabulary 50304)")

    def overrides(self, name: str) -> list[str]:
        """`model=NAME` at this depth and width: gpt as GPT-2 124M (its heads, tied as GPT-2 and nanoGPT's model
        are, where gpt's default is untied), any other preset at its own head size (presets.resized)."""
        shape = [f"model={name}", f"block_size={self.block}"]
        if name == "gpt":
            return [*shape, f"model.n_layer={self.layers}", f"model.n_embd={self.width}", f"model.n_head={self.heads}",
                    "model.tie_embeddings=true"]
        config = preset_config(name, vocab_size=50304, block_size=self.block)
        return [*shape, *model_overrides(config, resized(config, self.width, self.layers))]


def peak_flops(device: torch.device, given: float | None) -> float | None:
    """The GPU's dense bf16 peak from lmzoo's table (lmzoo.training.perf.GPU_PEAKS); --peak-flops gives any other."""
    if given or device.type != "cuda":
        return given
    return lmzoo_peak_flops(device, "bf16-mixed")


def flops_per_token(model: torch.nn.Module, block_size: int, device: torch.device) -> float:
    """Model FLOPs of one training token, forward and backward, as FlopCounterMode counts one real step.

    Attention runs on SDPA's math backend here, which FlopCounterMode counts on every device (it has no formula
    for the CPU's flash kernel); the count is that of the flash kernel the training step uses on CUDA."""
    model = model.to(device).train()
    x = torch.randint(0, model.vocab_size, (1, block_size), device=device)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        logits = model(x).logits
        F.cross_entropy(logits.flatten(0, 1).float(), x.flatten()).backward()
    return counter.get_total_flops() / block_size


def flash_attention_runs(device: torch.device, heads: int, block: int, head_dim: int) -> bool:
    """Whether SDPA's flash-attention kernel takes a causal bf16 attention of this shape."""
    q = torch.randn(1, heads, block, head_dim, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError:
        return False
    return True


def random_overrides(folder: Path) -> list[str]:
    return ["data=text", "data.name=random", f"data.path={folder / 'random.txt'}", f"paths.data_dir={folder}"]


def write_random_tokens(folder: Path, tokens: int = 2**22, seed: int = 0) -> Path:
    """Uniformly random GPT-2 token ids as train.bin, val.bin and test.bin in folder/random (nanoGPT reads the first
    two), with the meta.json lmzoo's prepare takes as built from folder/random.txt, a text that only describes them."""
    description = folder / "random.txt"
    description.write_text(f"{tokens} uniformly random GPT-2 token ids, seed {seed}\n")
    data = instantiate(compose_train(random_overrides(folder)).data, _convert_="all")
    data.data_dir.mkdir(parents=True, exist_ok=True)
    vocab_size, rng = 50257, np.random.default_rng(seed)
    splits = {}
    for split, count in (("train", tokens), ("val", tokens // 8), ("test", tokens // 8)):
        rng.integers(0, vocab_size, size=count, dtype=np.uint16).tofile(data.data_dir / f"{split}.bin")
        # No text lies behind these tokens: one "byte" each, so val/bpb means nothing on them.
        splits[split] = {"tokens": count, "bytes": count}
    meta = {
        "fingerprint": fingerprint(sha256_of_files([description]), dict(data.tokenizer), data.train_fraction,
                                   data.test_fraction, data.document_separator, data.dtype),
        "source": str(description),
        "tokenizer": {"kind": "tiktoken", "name": "gpt2"},
        "vocab_size": vocab_size,
        "eot_id": vocab_size - 1,
        "dtype": "uint16",
        "splits": splits,
    }
    (data.data_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return data.data_dir


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OptimizerStepClock(L.Callback):
    """The wall time at the start of training and at the end of each optimizer step, the device synchronized."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.times:
            synchronize(pl_module.device)
            self.times.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == len(self.times):
            synchronize(pl_module.device)
            self.times.append(time.perf_counter())

    def step_seconds(self, warmup: int) -> float:
        return statistics.median(np.diff(self.times)[warmup:])


class ProfileStep(L.Callback):
    """Profiles one optimizer step (CPU and CUDA activity): its table of operators by device time is added to
    out/profiles.txt, its Chrome trace written to out/trace-NAME.json.gz."""

    def __init__(self, step: int, out: Path, name: str):
        self.step, self.out, self.name = step, out, name
        self.profiler = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and self.profiler is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if pl_module.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.profiler is None or trainer.global_step <= self.step:
            return
        synchronize(pl_module.device)
        self.profiler.stop()
        self.out.mkdir(parents=True, exist_ok=True)
        sort = "self_device_time_total" if pl_module.device.type == "cuda" else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=40)
        with open(self.out / "profiles.txt", "a") as profiles:
            profiles.write(f"{self.name}: optimizer step {self.step + 1}\n{table}\n\n")
        trace = self.out / f"trace-{self.name}.json"
        self.profiler.export_chrome_trace(str(trace))
        with open(trace, "rb") as plain, gzip.open(f"{trace}.gz", "wb") as packed:
            shutil.copyfileobj(plain, packed)
        trace.unlink()
        self.profiler = None


def timed_run(args, overrides: list[str], micro_batch: int, workdir: Path) -> list[str]:
    """A run of --warmup + --steps optimizer steps, no validation or checkpoints, writing under `workdir`."""
    accumulation = Shape(args.tiny).sequences_per_step // micro_batch
    steps = args.warmup + args.steps
    return [*overrides, f"data.batch_size={micro_batch}", f"trainer.accumulate_grad_batches={accumulation}",
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps * accumulation + 1}",
            # A few timed steps: the schedule's warmup would outlast the run, which lmzoo refuses.
            "optim.warmup_steps=0", "~callbacks.model_checkpoint", "+trainer.enable_checkpointing=false", "sample_tokens=0",
            f"paths.output_dir={workdir}"]


def eager_step_peak(overrides: list[str], micro_batch: int) -> float:
    """Peak GPU memory (bytes) of one eager training step at `micro_batch`, as lmzoo logs it; inf if out of memory."""
    with tempfile.TemporaryDirectory(prefix="lmzoo-gpu-probe-") as workdir:
        cfg = compose_train([*overrides, "compile=false", f"data.batch_size={micro_batch}", "data.num_workers=0",
                             "trainer.max_steps=1", "trainer.log_every_n_steps=1", "trainer.val_check_interval=2",
                             "optim.warmup_steps=0",
                             "~callbacks.model_checkpoint", "+trainer.enable_checkpointing=false", "sample_tokens=0",
                             "trainer.enable_progress_bar=false", f"paths.output_dir={workdir}"])
        try:
            datamodule, lit, trainer = build(cfg)
            trainer.fit(lit, datamodule=datamodule)
            return trainer.logged_metrics["perf/max_memory_gb"].item() * 1e9
        except torch.OutOfMemoryError:
            return math.inf


def largest_micro_batch(overrides: list[str], sequences_per_step: int, device: torch.device) -> tuple[int, dict]:
    """The largest power of two dividing the global batch whose eager step peaks below MEMORY_FRACTION of the
    GPU's memory, and each tried micro-batch's peak in GB."""
    total = torch.cuda.get_device_properties(device).total_memory
    tried = {}
    for micro_batch in (2**k for k in range(8, -1, -1)):
        if sequences_per_step % micro_batch:
            continue
        peak = eager_step_peak(overrides, micro_batch)
        # The trial's model and Trainer hold each other: collect them before the next one takes the memory.
        gc.collect()
        torch.cuda.empty_cache()
        tried[micro_batch] = round(peak / 1e9, 2) if math.isfinite(peak) else "out of memory"
        if peak <= MEMORY_FRACTION * total:
            return micro_batch, tried
    raise SystemExit(f"not even one sequence of the model fits the GPU: {tried}")


def lmzoo_worker(args) -> dict:
    """One lmzoo measurement of --model: micro-batch, tokens/s, FLOPs per token, MFU."""
    device, shape = torch.device(args.device), Shape(args.tiny)
    trainer_overrides = ["trainer=gpu"] if device.type == "cuda" else ["trainer.accelerator=cpu"]
    overrides = [*shape.overrides(args.model), *data_overrides(args), *trainer_overrides]
    micro_batch, tried = args.micro_batch, {}
    if micro_batch is None and device.type == "cuda":
        micro_batch, tried = largest_micro_batch(overrides, shape.sequences_per_step, device)
    elif micro_batch is None:
        micro_batch = shape.sequences_per_step // 2
    with tempfile.TemporaryDirectory(prefix="lmzoo-gpu-run-") as workdir:
        datamodule, lit, trainer = build(compose_train(timed_run(args, overrides, micro_batch, Path(workdir))))
        config = lit.model.config
        flops = flops_per_token(type(config)(**config.as_dict()).build(), shape.block, device)
        clock = OptimizerStepClock()
        trainer.callbacks.append(clock)
        if args.profile_dir:
            trainer.callbacks.append(ProfileStep(args.warmup, Path(args.profile_dir), args.model))
        trainer.fit(lit, datamodule=datamodule)
    rate = shape.tokens_per_step / clock.step_seconds(args.warmup)
    peak = peak_flops(device, args.peak_flops)
    total, active = lit.model.parameter_counts()
    return {"model": args.model, "device": device_name(device), "parameters": total, "active_parameters": active,
            "micro_batch": micro_batch, "accumulation": shape.sequences_per_step // micro_batch,
            "micro_batch_peaks_gb": tried, "tokens_per_sec": rate, "flops_per_token": flops,
            "mfu": flops * rate / peak if peak else None, "peak_flops": peak,
            "flash_attention": device.type == "cuda" and flash_attention_runs(device, shape.heads, shape.block,
                                                                              shape.width // shape.heads)}


def sampling_worker(args) -> dict:
    """Sampling tokens/s of the 124M model (bf16 on CUDA), batch 1 and 32, with and without the KV cache."""
    device, shape = torch.device(args.device), Shape(args.tiny)
    torch.manual_seed(0)
    config = preset_config("gpt", vocab_size=50257, block_size=shape.block, n_layer=shape.layers, n_head=shape.heads,
                           n_embd=shape.width, tie_embeddings=True, init="gpt2")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = config.build().to(device, dtype).eval()

    def sample(batch: int, kv_cache: bool):
        prompt = torch.zeros(batch, 1, dtype=torch.long)
        settings = SamplingSettings(max_new_tokens=shape.new_tokens, kv_cache=kv_cache)

        def run():
            for _ in generate(model, prompt, settings, generator=torch.Generator(device).manual_seed(0)):
                pass
            synchronize(device)

        return run

    rows = []
    for batch in (1, 32):
        rates = tokens_per_second({"cached": sample(batch, True), "uncached": sample(batch, False)}, batch,
                                  shape.new_tokens, repeats=3)
        rows.append({"batch": batch, **rates})
    return {"device": device_name(device), "dtype": str(dtype), "new_tokens": shape.new_tokens, "rows": rows}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def data_overrides(args) -> list[str]:
    folder = Path(args.data_dir)
    return corpus_overrides(folder) if args.data == "corpus" else random_overrides(folder)


def run_worker(args, kind: str, *extra: str) -> dict:
    """bench/gpu.py --worker KIND in a process of its own; its RESULT line."""
    command = [sys.executable, __file__, "--worker", kind, "--device", args.device, "--data", args.data,
               "--data-dir", str(args.data_dir), "--warmup", str(args.warmup), "--steps", str(args.steps), *extra]
    command += ["--tiny"] if args.tiny else []
    command += ["--peak-flops", str(args.peak_flops)] if args.peak_flops else []
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def lmzoo_run(args, model: str, micro_batch: int | None, profile_dir: Path | None = None) -> dict:
    extra = ["--model", model] + (["--micro-batch", str(micro_batch)] if micro_batch else [])
    extra += ["--profile-dir", str(profile_dir)] if profile_dir else []
    return run_worker(args, "lmzoo", *extra)


def nanogpt_run(args, bins: Path, micro_batch: int) -> dict:
    """nanoGPT's train.py on the same model, batch and tokens, in a temporary folder holding a copy of its three
    files and data/lmzoo, a link to the bins; tokens/s from the median of its per-iteration times past --warmup."""
    shape = Shape(args.tiny)
    accumulation = shape.sequences_per_step // micro_batch
    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory(prefix="nanogpt-") as workdir:
        work = Path(workdir)
        for name in NANOGPT_FILES:
            shutil.copy(Path(args.nanogpt) / name, work / name)
        (work / "data").mkdir()
        (work / "data" / "lmzoo").symlink_to(bins.resolve())
        command = [sys.executable, "train.py", "--dataset=lmzoo", f"--out_dir={work / 'out'}",
                   f"--batch_size={micro_batch}", f"--gradient_accumulation_steps={accumulation}",
                   f"--block_size={shape.block}", f"--n_layer={shape.layers}", f"--n_head={shape.heads}",
                   f"--n_embd={shape.width}", "--dropout=0.0", "--bias=True", f"--device={args.device}",
                   f"--dtype={'bfloat16' if cuda else 'float32'}", f"--compile={cuda}",
                   f"--max_iters={args.warmup + args.steps - 1}", "--eval_interval=1000000", "--eval_iters=1",
                   "--log_interval=1", "--always_save_checkpoint=False"]
        result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=args.timeout)
    times = [float(ms) / 1000 for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", result.stdout, re.M)]
    if result.returncode != 0 or len(times) != args.warmup + args.steps:
        raise SystemExit(f"nanoGPT failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {"micro_batch": micro_batch, "accumulation": accumulation,
            "tokens_per_sec": shape.tokens_per_step / statistics.median(times[args.warmup:])}


def compare_with_nanogpt(args, bins: Path) -> dict:
    """GPT-2 124M, lmzoo and nanoGPT in alternation; the first lmzoo run finds the micro-batch both then use."""
    pairs, micro_batch = [], args.micro_batch
    for pair in range(args.pairs):
        order = ["lmzoo", "nanogpt"] if pair % 2 == 0 else ["nanogpt", "lmzoo"]
        result = {"first": order[0]}
        for program in order:
            if program == "lmzoo":
                result["lmzoo"] = lmzoo_run(args, "gpt", micro_batch)
                micro_batch = result["lmzoo"]["micro_batch"]
            else:
                result["nanogpt"] = nanogpt_run(args, bins, micro_batch)
        result["ratio"] = result["lmzoo"]["tokens_per_sec"] / result["nanogpt"]["tokens_per_sec"]
        pairs.append(result)
        print(f"pair {pair + 1} ({order[0]} first): lmzoo {result['lmzoo']['tokens_per_sec']:,.0f} tok/s, "
              f"nanoGPT {result['nanogpt']['tokens_per_sec']:,.0f} tok/s, ratio {result['ratio']:.3f}", flush=True)
    return {"pairs": pairs, "ratio": statistics.median(p["ratio"] for p in pairs),
            "mfu": statistics.median(p["lmzoo"]["mfu"] for p in pairs) if pairs[0]["lmzoo"]["mfu"] else None}


def percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "n/a"


def print_table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


def report(args, results: dict) -> list[str]:
    """Print the tables; return the goals missed (on an H100)."""
    missed = []
    if "gpt2" in results:
        gpt2 = results["gpt2"]
        first = gpt2["pairs"][0]["lmzoo"]
        print(f"\n{Shape(args.tiny)} on {first['device']}: micro-batch {first['micro_batch']} x "
              f"{first['accumulation']} accumulated, flash attention {'yes' if first['flash_attention'] else 'no'}, "
              f"{first['flops_per_token'] / 1e6:,.0f} MFLOPs/token")
        print_table(["pair", "first", "lmzoo tok/s", "nanoGPT tok/s", "lmzoo / nanoGPT", "lmzoo MFU"],
                    [[number, pair["first"], f"{pair['lmzoo']['tokens_per_sec']:,.0f}",
                      f"{pair['nanogpt']['tokens_per_sec']:,.0f}", f"{pair['ratio']:.3f}",
                      percent(pair["lmzoo"]["mfu"])] for number, pair in enumerate(gpt2["pairs"], 1)])
        print(f"median ratio {gpt2['ratio']:.3f}, median MFU {percent(gpt2['mfu'])}")
        if "H100" in first["device"]:
            missed += [f"MFU {percent(gpt2['mfu'])} < {percent(GOAL_MFU)}"] if gpt2["mfu"] < GOAL_MFU else []
            missed += [f"ratio {gpt2['ratio']:.3f} < {GOAL_RATIO}"] if gpt2["ratio"] < GOAL_RATIO else []
    if "zoo" in results:
        print()
        print_table(["model", "parameters", "active", "micro-batch", "tok/s", "MFLOPs/token", "MFU"],
                    [[name, f"{row['parameters']:,}", f"{row['active_parameters']:,}",
                      f"{row['micro_batch']} x {row['accumulation']}", f"{row['tokens_per_sec']:,.0f}",
                      f"{row['flops_per_token'] / 1e6:,.0f}", percent(row["mfu"])]
                     for name, row in results["zoo"].items()])
    if "sampling" in results:
        sampling = results["sampling"]
        print(f"\nSampling {sampling['new_tokens']} tokens, {sampling['dtype']}, {sampling['device']}")
        print_table(["batch", "cached tok/s", "uncached tok/s", "cached / uncached"],
                    [[row["batch"], f"{row['cached']:,.0f}", f"{row['uncached']:,.0f}",
                      f"{row['cached'] / row['uncached']:.1f}x"] for row in sampling["rows"]])
    return missed


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"what to measure: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (its train.py, model.py, configurator.py)")
    parser.add_argument("--data", choices=["corpus", "random"], default="corpus")
    parser.add_argument("--data-dir", type=Path, default=REPO / ".gpu-data",
                        help="with --data corpus: the folder bench/gpu_data.py wrote (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=2, help="lmzoo / nanoGPT pairs (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps not timed (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps timed (default: %(default)s)")
    parser.add_argument("--models", type=lambda names: names.split(","), default=ZOO,
                        help=f"the zoo part's models (default: {','.join(ZOO)}; gpt is GPT-2 124M)")
    parser.add_argument("--micro-batch", type=int, help="instead of the largest that fits")
    parser.add_argument("--profile", action="store_true", help="profile one lmzoo step of each model (needs --out)")
    parser.add_argument("--out", type=Path, help="write results.json (and profiles) here")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, 64 tokens, 512 tokens a step")
    parser.add_argument("--peak-flops", type=float, help="the device's dense bf16 FLOP/s, if not in the table")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for one measurement process")
    parser.add_argument("--worker", choices=["lmzoo", "sampling"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = args.parts or PARTS
    if args.worker:
        return args
    for part in set(args.parts) - set(PARTS):
        parser.error(f"{part} is not a part; choose from {', '.join(PARTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; for a smoke run on this machine pass --device cpu --tiny")
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu runs only with --tiny: GPT-2 124M steps of 0.5M tokens take hours on a CPU")
    if "nanogpt" in args.parts and not (args.nanogpt and (args.nanogpt / "train.py").is_file()):
        parser.error("the nanogpt part needs --nanogpt DIR, a nanoGPT checkout with train.py "
                     "(bench/gpu_data.py --nanogpt copies one into .gpu-data/nanogpt)")
    for name in set(args.models) - set(ZOO):
        parser.error(f"--models takes {', '.join(ZOO)}; not {name}")
    if args.data == "corpus" and not (corpus_bins(args.data_dir) / "meta.json").is_file():
        parser.error(f"no prepared corpus in {args.data_dir}; run python bench/gpu_data.py first, "
                     "or pass --data random")
    if args.profile and not args.out:
        parser.error("--profile writes into --out DIR; pass one")
    for name in ("pairs", "warmup", "steps", "micro_batch"):
        if getattr(args, name) is not None and getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        result = lmzoo_worker(args) if args.worker == "lmzoo" else sampling_worker(args)
        print("RESULT " + json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="lmzoo-gpu-data-") as scratch:
        if args.data == "random":
            args.data_dir = Path(scratch)
            bins = write_random_tokens(args.data_dir)
        else:
            bins = corpus_bins(args.data_dir)
        results = {"data": args.data, "torch": torch.__version__, "warmup": args.warmup, "steps": args.steps}
        if "nanogpt" in args.parts:
            results["gpt2"] = compare_with_nanogpt(args, bins)
        if "zoo" in args.parts:
            results["zoo"] = {name: lmzoo_run(args, name, args.micro_batch) for name in args.models}
        if "sampling" in args.parts:
            results["sampling"] = run_worker(args, "sampling")
        if args.profile:
            (args.out / "profiles.txt").unlink(missing_ok=True)
            micro_batches = {name: row["micro_batch"] for name, row in results.get("zoo", {}).items()}
            if "gpt2" in results:
                micro_batches["gpt"] = results["gpt2"]["pairs"][0]["lmzoo"]["micro_batch"]
            for name, micro_batch in micro_batches.items():
                lmzoo_run(args, name, micro_batch, args.out)
    missed = report(args, results)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    for goal in missed:
        print(f"MISSED: {goal}; profile it with --profile --out DIR")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
