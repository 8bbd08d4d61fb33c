"""lmzoo's own folder format: model.safetensors plus lmzoo.json (architecture, config, tokenizer, training so
far, and the sha256 of the weights).

`python -m lmzoo.export` writes it for architectures that no transformers class describes, and writes the
same lmzoo.json beside the Hugging Face files of the others, so that lmzoo loads those back as they were;
every lmzoo command loads both. safetensors is imported only here, inside the functions that need it.
"""

import dataclasses
import json
import re
from pathlib import Path

from lmzoo.checkpoints.integrity import check_digest
from lmzoo.checkpoints.record import FOLDER_KEYS, ModelRecord, check_readable
from lmzoo.errors import UserError
from lmzoo.files import sha256_of, write_atomically
from lmzoo.models import LanguageModel

FOLDER_RECORD = "lmzoo.json"
WEIGHTS = "model.safetensors"
INSTALL_HINT = "pip install 'lmzoo[hf]'"


def safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError(f"reading and writing model.safetensors needs safetensors: {INSTALL_HINT}") from None
    return safetensors.torch


def safetensors_io_error(error: BaseException) -> str | None:
    """The operating system's reason in safetensors' error for a file it could not write, from its Rust I/O error
    in either wording (`IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })`, and
    safetensors 0.8's `Error while serializing: I/O error: File too large (os error 27)`); None for any other."""
    text = str(error)
    if type(error).__name__ != "SafetensorError" or not ("IoError" in text or "I/O error" in text):
        return None
    found = re.search(r'message: "([^"]*)"', text) or re.search(r"I/O error: (.*?) \(os error \d+\)", text)
    return found.group(1) if found else text.strip().splitlines()[0]


def is_lmzoo_folder(source: str) -> bool:
    return (Path(source).expanduser() / FOLDER_RECORD).is_file()


def save_folder(model: LanguageModel, tokenizer_spec: dict, out: Path, source: ModelRecord | None = None) -> None:
    """model.safetensors and lmzoo.json in `out`; the source's record gives its training so far."""
    out.mkdir(parents=True, exist_ok=True)
    safetensors_torch().save_model(model, str(out / WEIGHTS))
    write_record(model, tokenizer_spec, out, source)


def write_record(model: LanguageModel, tokenizer_spec: dict, out: Path, source: ModelRecord | None = None) -> None:
    """lmzoo.json for the weights already in `out`: what rebuilds the model, the source's training so far
    (global_step and best_val_loss), and the weights' sha256."""
    record = ModelRecord.of(model, tokenizer_spec, global_step=source and source.global_step,
                            best_val_loss=source and source.best_val_loss, weights_sha256=sha256_of(out / WEIGHTS))
    write_atomically(out / FOLDER_RECORD, (json.dumps(record.stored(FOLDER_KEYS), indent=2) + "\n").encode("utf-8"))


def read_record(folder: Path) -> ModelRecord:
    """lmzoo.json of `folder`, upgraded to this release's layout, its weights checked against their sha256."""
    try:
        record = json.loads((folder / FOLDER_RECORD).read_text())
    except ValueError as error:
        raise UserError(f"{folder / FOLDER_RECORD} is damaged ({error}); export the model again") from None
    check_readable(record.get("version", "unknown"), folder)
    if not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder} has no {WEIGHTS} beside its {FOLDER_RECORD}; export the model again")
    check_digest(folder / WEIGHTS, record.get("weights_sha256"))
    return ModelRecord.read(record)


def load_folder(source: str) -> tuple[LanguageModel, ModelRecord]:
    folder = Path(source).expanduser()
    record = read_record(folder)
    model = record.build_model()
    try:
        safetensors_torch().load_model(model, str(folder / WEIGHTS))
    except Exception as error:
        raise UserError(f"{folder / WEIGHTS} does not load ({type(error).__name__}); export the model again") from None
    return model, dataclasses.replace(record, origin=str(folder))
