"""lmzoo's own folder format: model.safetensors plus lmzoo.json (architecture, config, tokenizer).

`python -m lmzoo.export` writes it for architectures that no transformers class describes; every lmzoo
command loads it. safetensors is imported only here, inside the functions that need it.
"""

import json
from pathlib import Path

from lmzoo import __version__
from lmzoo.checkpoints.record import architecture_record, build_model, check_readable, upgrade_record
from lmzoo.errors import UserError
from lmzoo.files import write_atomically
from lmzoo.models import LanguageModel

FOLDER_RECORD = "lmzoo.json"
INSTALL_HINT = "pip install 'lmzoo[hf]'"


def safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError(f"reading and writing model.safetensors needs safetensors: {INSTALL_HINT}") from None
    return safetensors.torch


def is_lmzoo_folder(source: str) -> bool:
    return (Path(source).expanduser() / FOLDER_RECORD).is_file()


def save_folder(model: LanguageModel, tokenizer_spec: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    safetensors_torch().save_model(model, str(out / "model.safetensors"))
    record = {"version": __version__, **architecture_record(model), "tokenizer": tokenizer_spec}
    write_atomically(out / FOLDER_RECORD, (json.dumps(record, indent=2) + "\n").encode("utf-8"))


def load_folder(source: str) -> tuple[LanguageModel, dict]:
    folder = Path(source).expanduser()
    record = json.loads((folder / FOLDER_RECORD).read_text())
    check_readable(record.get("version", "unknown"), folder)
    record = upgrade_record(record)
    model = build_model(record)
    safetensors_torch().load_model(model, str(folder / "model.safetensors"))
    return model, {**record, "best_val_loss": float("inf"), "global_step": 0}
