"""Models out: a model whose every layer's mixer declares a transformers class (lmzoo.models.hf_layout.HFLayout, the
mixer's `hf`) as that class, when its other options fit it (the attention's: GPT2LMHeadModel, LlamaForCausalLM and
their kin); any other model as lmzoo's own folder (model.safetensors plus lmzoo.json).

transformers is imported inside the functions that need it, so training and sampling never import it.
"""

import contextlib
import os
import shutil
from pathlib import Path

from lmzoo.checkpoints.folder import INSTALL_HINT, safetensors_io_error, save_folder, write_record
from lmzoo.checkpoints.hf_tokenizer import save_tokenizer
from lmzoo.checkpoints.load import load_model
from lmzoo.checkpoints.record import ModelRecord
from lmzoo.data.tokenizer import Tokenizer
from lmzoo.errors import UserError
from lmzoo.files import os_error_behind, sync_folder
from lmzoo.models import LanguageModel, TransformerConfig
from lmzoo.models.lora import LoRALinear, merge


def converter_for(model: LanguageModel):
    """The function that turns `model` into a transformers model, or None when no transformers class fits it: the
    layout its layers' mixers share decides, from the model's other options."""
    if type(model.config) is not TransformerConfig:
        return None
    layout = model.hf_layout()
    return layout.exporter(model) if layout is not None else None


def export_checkpoint(ckpt: str, out: str, merge_adapters: bool = False) -> str:
    """Write the model of `ckpt` into the new folder `out`; return a line saying what was written.

    Beside the weights goes lmzoo.json: the model's config, tokenizer and training so far, so that every
    lmzoo command loads the folder back as the model it was.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"out={out} already exists and is not an empty folder; pass a new folder")
    model, tokenizer, record = load_model(ckpt)
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        if not merge_adapters:
            raise UserError(f"{ckpt} holds LoRA adapters; pass merge=true to fold them into the exported weights")
        merge(model)
    converter = converter_for(model)
    with folder_written_whole(out):
        if converter is None:
            save_folder(model, tokenizer.spec, partial_folder(out), record)
            options = " in these options" if type(model.config) is TransformerConfig else ""
            return (f"{type(model).__name__}{options} has no transformers class; wrote lmzoo safetensors and "
                    f"lmzoo.json to {out}, which python -m lmzoo.generate ckpt={out} loads")
        wrote = export_hf(model, converter, tokenizer, partial_folder(out), record)
        return f"wrote {wrote} to {out}; load it with AutoModelForCausalLM.from_pretrained"


def partial_folder(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


@contextlib.contextmanager
def folder_written_whole(out: Path):
    """The block writes into partial_folder(out), which becomes `out` only when the block completes: a full disk,
    an error or a kill leaves no half-written `out` that commands would take for a model. The partial folder of
    a killed export is removed by the next one."""
    partial = partial_folder(out)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        yield
        if out.is_dir():
            out.rmdir()
        os.replace(partial, out)
        sync_folder(out.parent)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        cause = os_error_behind(error)
        # safetensors (lmzoo's own folder, and transformers' save_pretrained) reports its I/O errors as its own.
        reason = (cause.strerror or str(cause)) if cause is not None else safetensors_io_error(error)
        if reason is None:
            raise
        raise UserError(f"cannot write {out} ({reason}); pass out= a writable new folder, or free disk space") from None


def export_hf(model, converter, tokenizer: Tokenizer, out: Path, source: ModelRecord) -> str:
    """Write the transformers model of `model` and its tokenizer into `out`; return what was written."""
    try:
        from transformers import GenerationConfig
    except ImportError:
        raise UserError(f"exporting to Hugging Face needs transformers: {INSTALL_HINT}") from None
    hf_model = converter(model, tokenizer.eot_id)
    hf_model.generation_config = GenerationConfig(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id,
                                                  use_cache=hf_model.config.use_cache)
    hf_model.save_pretrained(out)
    saved = save_tokenizer(tokenizer, out)
    write_record(model, tokenizer.spec, out, source)
    return f"{type(hf_model).__name__} ({saved})"
