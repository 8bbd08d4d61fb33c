"""What a run was: its resolved config, the lmzoo version and the git commit of the code that ran it."""

import json
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmzoo import __version__


def provenance(cfg: DictConfig) -> dict:
    return {"version": __version__, "git_commit": git_commit(), "config": OmegaConf.to_container(cfg, resolve=True)}


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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "provenance.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
