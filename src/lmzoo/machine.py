"""The machine a run computes on, and `repro=true`: the CPU kernels held at AVX2, so that a run gives the same bits
on every x86-64 CPU of the last decade.

PyTorch's own kernels (ATen), MKL's and oneDNN's each pick the widest vector instructions the CPU has; an AVX-512
CPU sums in another order than an AVX2 one, and its losses differ in the last bits (issue 36: 0.0147 bpb on one
seed). Each library reads its ceiling from the environment once, as it loads or first runs, so the variables are
set by the entry point before torch is imported (lmzoo.cli.run_command); a run checks that they took effect.
"""

import os
import platform
import re

# Every library's ceiling at AVX2 (Haswell, 2013; AMD since Excavator, 2015).
REPRO_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# The CPU flags that decide which kernels run: vector widths, fused multiply-add, and the bf16 and matrix units.
ISA_FLAG = re.compile(r"^(sse4_[12]|avx.*|fma|f16c|amx.*)$")


def repro_asked(arguments: list[str]) -> bool:
    """Whether the command line's last `repro=` (also `+repro=`, `++repro=`) says true."""
    values = [argument.split("=", 1)[1] for argument in arguments
              if argument.lstrip("+").split("=", 1)[0] == "repro" and "=" in argument]
    return bool(values) and values[-1].strip().lower() == "true"


def hold_instruction_set(arguments: list[str]) -> None:
    """Set REPRO_ENVIRONMENT when the command line asks for repro=true; called before torch loads."""
    if repro_asked(arguments):
        os.environ.update(REPRO_ENVIRONMENT)


def instruction_set_held() -> bool:
    """Whether this process's kernels are held at AVX2: the variables set, and ATen's choice no wider (torch
    reads ATEN_CPU_CAPABILITY once; set after it loaded, the variable would not have reached it)."""
    import torch

    return (all(os.environ.get(key) == value for key, value in REPRO_ENVIRONMENT.items())
            and torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"))


def machine_record() -> dict:
    """The CPU, its vector-ISA flags, the kernels torch chose, the thread count, and the library versions: what the
    last bits of a run depend on besides its config and commit."""
    import torch

    build = torch.__config__.show()
    return {
        "cpu": cpu_model(),
        "isa_flags": sorted(flag for flag in cpu_flags() if ISA_FLAG.match(flag)),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mkl": library_version(build, r"Math Kernel Library Version (\S+)"),
        "onednn": library_version(build, r"MKL-DNN (v\S+)"),
        "python": platform.python_version(),
        "environment": {key: os.environ.get(key) for key in REPRO_ENVIRONMENT},
    }


def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            text = info.read().split("\n\n")[0]
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def cpu_model() -> str:
    return cpu_info().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    return cpu_info().get("flags", "").split()


def library_version(build: str, pattern: str) -> str | None:
    found = re.search(pattern, build)
    return found.group(1) if found else None
