"""The hardware's peak FLOP/s, against which a run's model FLOPs utilization (MFU) is measured.

In order: the user's `trainer.peak_flops`; on CUDA, NVIDIA's datasheet figure for the device and precision;
on CPU, a short matmul probe at the run's precision, cached per machine.
"""

import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from lmzoo.errors import UserError
from lmzoo.files import write_atomically

# Dense FLOP/s from NVIDIA's datasheets (their "with sparsity" figures halved): bf16 (and fp16) tensor cores,
# and fp32 without TF32, which PyTorch does not use for matmuls by default. Matched in order on the device
# name, so "H100 PCIe" comes before "H100" and "L40S" before "L4".
GPU_PEAKS = [
    ("H100 PCIe", {"bf16": 756e12, "fp32": 51.2e12}),
    ("H100", {"bf16": 989.4e12, "fp32": 66.9e12}),
    ("H200", {"bf16": 989.4e12, "fp32": 66.9e12}),
    ("A100", {"bf16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362.05e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp32": 30.3e12}),
    ("RTX 4090", {"bf16": 165.2e12, "fp32": 82.6e12}),
]
PROBE_SECONDS = 1.0
PROBE_SIZE = 512
# Names the probe in the cache's keys, so that a machine's figures from an earlier probe are measured again.
PROBE = "fastest 512 matmul"


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a Lightning precision setting runs its matmuls in."""
    return torch.bfloat16 if "16" in str(precision) else torch.float32


def peak_flops(device: torch.device, precision: str, given: float | None = None) -> float | None:
    """FLOP/s the device can reach at this precision: `given` (trainer.peak_flops, checked by the run), or the
    table's or the probe's; None when none of them knows it."""
    if given is not None:
        return float(given)
    dtype = compute_dtype(precision)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peaks = next((peaks for key, peaks in GPU_PEAKS if key in name), None)
        return peaks and peaks["bf16" if dtype == torch.bfloat16 else "fp32"]
    if device.type == "cpu":
        return cpu_peak_flops(dtype)
    return None


def describe_peak(device: torch.device, precision: str, given: float | None, peak: float | None) -> str:
    """One line naming the peak a run's MFU is measured against, and where it comes from."""
    if peak is None:
        return f"MFU: no peak FLOP/s known for {device.type}; set trainer.peak_flops to log perf/mfu"
    dtype = "bf16" if compute_dtype(precision) == torch.bfloat16 else "fp32"
    if given is not None:
        source = "trainer.peak_flops"
    elif device.type == "cuda":
        source = f"NVIDIA's dense {dtype} figure for the {torch.cuda.get_device_name(device)}"
    else:
        source = (f"the fastest {dtype} {PROBE_SIZE}x{PROBE_SIZE} matmul on this {cpu_name()} with "
                  f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)}, cached in {cache_dir() / 'peak_flops.json'}")
    return f"MFU is measured against a peak of {peak / 1e9:,.1f} GFLOP/s a device: {source}"


def cpu_peak_flops(dtype: torch.dtype) -> float:
    """A matmul probe's FLOP/s on this CPU with torch's threads, measured once per machine and cached."""
    key = f"{machine()}|{dtype}|{PROBE}"
    return cached("peak_flops.json", key, lambda: matmul_flops_per_second(dtype))[0]


# Raised when a change to lmzoo's kernels moves a step's speed, so that no run reuses what an earlier lmzoo
# measured (2: a CPU's bf16 training step attends in fp32 up to 256 keys; 3: a CPU's dropout masks drawn 15 bits a
# lane, lmzoo.models.blocks.dropout; 4: that step attends by hand in bf16, lmzoo.models.blocks.attends_by_hand).
KERNELS = 4


def machine() -> str:
    """What a measurement of speed depends on besides the work: the CPU, the instructions torch's kernels use
    (repro=true holds them at AVX2), torch's threads, torch's version and lmzoo's kernels."""
    return (f"{cpu_name()}|{torch.backends.cpu.get_cpu_capability()}|{torch.get_num_threads()} threads|"
            f"torch {torch.__version__}|kernels {KERNELS}")


def cache_path(name: str) -> Path:
    return cache_dir() / name


def read_cache(name: str) -> dict:
    """The measurements cached in file `name` of cache_dir(); none when it is missing or unreadable."""
    try:
        known = json.loads(cache_path(name).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def write_cache(name: str, key: str, value) -> None:
    """Keep `value` under `key` in cache file `name`. An unwritable cache only costs measuring again next time."""
    known = read_cache(name)
    known[key] = value
    try:
        write_atomically(cache_path(name), (json.dumps(known, indent=2) + "\n").encode("utf-8"))
    except (OSError, UserError):
        pass


def cached(name: str, key: str, measure):
    """The value cached under `key` in cache file `name`, or `measure()`'s, cached; and whether it was cached."""
    known = read_cache(name)
    if key in known:
        return known[key], True
    value = measure()
    write_cache(name, key, value)
    return value, False


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmzoo"


def cpuinfo(field: str) -> str | None:
    """The first `field` of Linux's /proc/cpuinfo ("model name", "flags"); None elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx2, amx_bf16, ...), as Linux reports them; none known elsewhere."""
    return set((cpuinfo("flags") or "").split())


def matmul_flops_per_second(dtype: torch.dtype) -> float:
    """FLOP/s of the fastest of the square matmuls of PROBE_SIZE run over about PROBE_SECONDS, after one warm-up
    product: the fastest, not the mean, because other work on a shared CPU slows some products and never speeds one.
    Its operands come from a generator of its own: a run's first probe on a machine must not move the seeded
    stream that initialises and drops out, or the same seed would train otherwise once the probe is cached."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(PROBE_SIZE, PROBE_SIZE, generator=generator).to(dtype) for _ in range(2))
    a @ b
    fastest, started = math.inf, time.perf_counter()
    while time.perf_counter() - started < PROBE_SECONDS:
        product_started = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - product_started)
    return 2 * PROBE_SIZE**3 / fastest
