"""What a run was: its resolved config, the lmzoo version, the git commit of the code that ran it and the machine
(CPU, vector-ISA flags, the kernels torch chose, threads, library versions: lmzoo.machine)."""

import json
import subprocess
from pathlib import Path

from lmzoo import __version__
from lmzoo.files import write_atomically
from lmzoo.machine import machine_record

PROVENANCE = "provenance.json"
# The keys of a config that say where a run continued from, not what it trained.
PER_RUN_KEYS = ("ckpt_path", "resume")


def provenance(config: dict) -> dict:
    """The record of a run of `config` (resolved, as lmzoo.training.plan.RunPlan.recorded_config gives it)."""
    return {"version": __version__, "git_commit": git_commit(), "machine": machine_record(), "config": config}


def git_commit() -> str | None:
    """The commit of lmzoo's source, with `-dirty` when it has changes; None outside a git checkout."""
    source = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if changes.stdout.strip() else "")


def write_provenance(record: dict, folder: str | Path) -> None:
    payload = json.dumps(record, indent=2, default=str) + "\n"
    write_atomically(Path(folder) / PROVENANCE, payload.encode("utf-8"),
                     "choose a writable run folder with hydra.run.dir=PATH")


def flatten(config: dict, prefix: str = "", leaf=lambda value: False) -> dict:
    """`{"optim": {"lr": 1e-3}}` as `{"optim.lr": 1e-3}`; a dict that `leaf` accepts is kept whole."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and not leaf(value):
            flat.update(flatten(value, f"{prefix}{key}.", leaf))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
