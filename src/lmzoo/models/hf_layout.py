"""What a sequence mixer declares to be written as a transformers class and read back (`SequenceMixer.hf`), and the
pieces every such layout shares: the weights cut to the true vocabulary and padded back, named and split as the
other class has them, and loaded into it.

lmzoo.checkpoints.export and lmzoo.checkpoints.hf find the layout from the mixers a model holds
(`Transformer.hf_layout`), so a mixer with a transformers class brings its converter in its own file. transformers
is imported inside the functions that need it, so training and sampling never import it.
"""

from typing import Callable

import torch

from lmzoo.errors import UserError

# The embedding and head rows past the true vocabulary (lmzoo pads them for speed; Hugging Face does not).
VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")
# A layout: each lmzoo weight, the weights of the other class it is made of, and their rows in it (None: all).
Layout = list[tuple[str, list[str], list[int] | None]]


class HFLayout:
    """How a model whose every layer holds one mixer is a transformers class. A mixer's file makes one and names it
    as the mixer's `hf`."""

    # The config.json model_types this layout reads back (with the lmzoo.json python -m lmzoo.export writes).
    model_types: tuple[str, ...] = ()

    def __init__(self, examples: dict[str, tuple[dict, str | None]]):
        # What it covers, as tests/test_interop.py proves: TransformerConfig settings (beside a small shape) and the
        # transformers class they export as, None where they have none (and export as an lmzoo folder).
        self.examples = examples

    def exporter(self, model) -> Callable | None:
        """The function (model, eot_id) -> transformers model for `model`'s other options (its norm, positions,
        feed-forward layers), or None when they have no transformers class."""
        raise NotImplementedError

    def state_dict(self, weights: dict[str, torch.Tensor], model, source: str) -> dict[str, torch.Tensor]:
        """The weights of a folder this layout wrote (as `exporter`'s class names them) as `model`'s state dict."""
        raise NotImplementedError


def true_vocabulary(model) -> dict[str, torch.Tensor]:
    """`model`'s state dict with the embedding and head cut to the true vocabulary."""
    state = model.state_dict()
    for key in VOCAB_ROWS:
        state[key] = state[key][: model.vocab_size]
    return state


def laid_out(model, layout: Layout, ours: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """`model`'s weights (or `ours`, its state dict cut to the true vocabulary) under the names of `layout`'s class,
    split where it has several."""
    ours, state = true_vocabulary(model) if ours is None else ours, {}
    for name, theirs, rows in layout:
        state |= dict(zip(theirs, ours[name].split(rows) if rows else [ours[name]]))
    return state


def gathered(weights: dict[str, torch.Tensor], layout: Layout, source: str) -> dict[str, torch.Tensor]:
    """Weights of `layout`'s class (as lmzoo exports them) joined under lmzoo's names."""
    try:
        return {ours: torch.cat([weights[name] for name in theirs]) for ours, theirs, _ in layout}
    except KeyError as error:
        raise UserError(f"{source} has no weight {error.args[0]}; it does not match its lmzoo.json") from None


def joined(weights: dict[str, torch.Tensor], model, source: str, layout: Layout) -> dict[str, torch.Tensor]:
    """Weights of `layout`'s class (as lmzoo exports them) joined and padded into `model`'s state dict."""
    return tied_and_checked(gathered(weights, layout, source), model, source)


def tied_and_checked(state: dict[str, torch.Tensor], model, source: str) -> dict[str, torch.Tensor]:
    """`state` padded to the model's vocabulary, its head tied where the model ties it, and every weight the model
    has present in its shape."""
    expected = model.state_dict()
    if model.config.tie_embeddings and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return checked(padded_vocabulary(state, expected), expected, source)


def padded_vocabulary(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The embedding and head padded with zero rows to lmzoo's padded vocabulary (rows no token id reaches)."""
    for key in VOCAB_ROWS:
        if key in state and key in expected and state[key].size(0) < expected[key].size(0):
            tensor = state[key]
            state[key] = torch.cat([tensor, tensor.new_zeros(expected[key].size(0) - tensor.size(0), tensor.size(1))])
    return state


def checked(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    wrong = sorted(key for key in expected if key not in state or state[key].shape != expected[key].shape)
    if wrong:
        raise UserError(f"{source} does not match its config.json: {wrong[0]} is missing or misshapen")
    return state


def load_into(hf_model, state: dict[str, torch.Tensor]):
    """Copy `state` into `hf_model`; biases lmzoo leaves out (bias=False) become zeros, the tied head is shared."""
    missing, unexpected = hf_model.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    tied_head = hf_model.config.tie_word_embeddings and "lm_head.weight" not in state
    untouched = [name for name in missing if not (name.endswith(".bias") or (tied_head and name == "lm_head.weight"))]
    if untouched or unexpected:
        raise RuntimeError(f"export left {untouched} unset and {unexpected} unused")
    with torch.no_grad():
        for name in missing:
            if name.endswith(".bias"):
                hf_model.get_parameter(name).zero_()
    return hf_model.eval()


def trunk_names(model, embeddings: str, final_norm: str) -> Layout:
    """The embedding, the final norm and an untied head under the other class's names."""
    layout = [("transformer.wte.weight", [embeddings], None), ("transformer.ln_f.weight", [final_norm], None)]
    if not model.config.tie_embeddings:
        layout.append(("lm_head.weight", ["lm_head.weight"], None))
    return layout


def same_names(ours: str, theirs: str, names: list[str]) -> Layout:
    return [(ours + name, [theirs + name], None) for name in names]
