"""Checkpoints and interop, one module per format: lmzoo training checkpoints (ckpt), lmzoo folders (folder),
Hugging Face GPT-2 in (gpt2), Hugging Face out (export, hf_tokenizer); `load` is the one loader over them."""

from lmzoo.checkpoints.ckpt import read_checkpoint
from lmzoo.checkpoints.load import load_model, model_card
from lmzoo.checkpoints.record import ModelRecord

__all__ = ["ModelRecord", "load_model", "model_card", "read_checkpoint"]
