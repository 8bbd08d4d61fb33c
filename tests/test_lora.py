"""Fine-tuning from pretrained weights: LoRA adapters on a frozen base, full fine-tuning, and bad input."""

import dataclasses
import math

import pytest
import torch
from helpers import PRESETS, compose_train, make, tiny_config

from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.checkpoints.integrity import weights_sha256
from lmzoo.errors import UserError
from lmzoo.models import Transformer, preset_config
from lmzoo.models.lora import LoRA, LoRALinear, matching_linears, merge
from lmzoo.training.run import build, train


def tiny_gpt(n_layer=2, n_embd=32):
    torch.manual_seed(0)
    config = preset_config("gpt", vocab_size=65, block_size=16, n_layer=n_layer, n_head=2, n_embd=n_embd,
                           tie_embeddings=True, init="gpt2")
    return config.build().eval()


@pytest.mark.parametrize("targets, per_layer", [
    (["qkv", "proj", "mlp"], lambda d: (d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d)),
    (["qkv"], lambda d: d + 3 * d),
    (["mlp"], lambda d: (d + 4 * d) + (4 * d + d)),
])
def test_only_adapters_train_and_their_count_is_r_times_in_plus_out(targets, per_layer):
    model = LoRA(r=4, alpha=8, targets=targets).apply(tiny_gpt(n_layer=3, n_embd=32))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 3 * 4 * per_layer(32)
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def test_merged_model_gives_the_adapted_logits():
    model = LoRA(r=4, alpha=8).apply(tiny_gpt())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(0.0, 0.1)
    idx = torch.randint(0, 65, (2, 16))
    adapted = model(idx).logits
    assert not torch.allclose(adapted, tiny_gpt()(idx).logits, atol=1e-3)
    merged = merge(model)
    assert not any(isinstance(module, LoRALinear) for module in merged.modules())
    torch.testing.assert_close(merged(idx).logits, adapted, atol=1e-5, rtol=0)


def adapted_layers(model) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def test_each_architecture_declares_its_targets_and_expert_layers_are_covered():
    moe = LoRA(r=2, targets=["mlp"]).apply(make("moe"))
    c, n_experts = moe.config, len(moe.transformer.h[0].mlp.experts)
    experts = {f"transformer.h.{layer}.mlp.experts.{e}.{linear}" for layer in range(c.n_layer)
               for e in range(n_experts) for linear in ("c_fc", "c_proj")}
    assert adapted_layers(moe) == experts
    moa = LoRA(r=2, targets=["qkv", "proj"]).apply(make("moa_moe"))
    assert {name.split(".", 4)[-1] for name in adapted_layers(moa)} == {
        *(f"experts.{e}.{linear}" for e in range(len(moa.transformer.h[0].attn.experts))
          for linear in ("c_q", "c_proj")), "c_kv"}
    mlp = LoRA(r=2, targets=["hidden"]).apply(make("mlp"))
    assert len(adapted_layers(mlp)) == 3


@pytest.mark.parametrize("name", [name for name in PRESETS if isinstance(make(name), Transformer)])
def test_a_transformers_targets_are_those_its_layers_parts_declare(name):
    """Each layer's mixer and feed-forward layer name their own targets (Part.lora_targets): each target adapts
    exactly the linears they name in every layer, and a part's other linears (a recurrence's gates) stay frozen."""
    model = make(name)
    parts = [(f"transformer.h.{layer}.{slot}.", part) for layer, block in enumerate(model.transformer.h)
             for slot, part in (("attn", block.attn), ("mlp", block.mlp)) if part is not None]
    for target in model.lora_targets:
        adapted = adapted_layers(LoRA(r=2, targets=[target]).apply(make(name)))
        assert adapted == {prefix + linear for prefix, part in parts
                           for linear in matching_linears(part, part.lora_targets.get(target, ()))}


@pytest.mark.parametrize("name, targets, message", [
    ("gpt", ["qkv", "attention"], r"LoRA target 'attention' matches no layer of Transformer; choose finetune.targets "
                                  r"from \['mlp', 'proj', 'qkv'\]"),
    ("moa_moe", ["qkv", "c_attn"], r"LoRA target 'c_attn' matches no layer of Transformer; choose finetune.targets "
                                   r"from \['mlp', 'proj', 'qkv'\]"),
    ("mlp", ["qkv"], r"LoRA target 'qkv' matches no layer of MLPLanguageModel; choose finetune.targets from "
                     r"\['head', 'hidden'\]"),
    ("bigram", ["qkv"], r"LoRA target 'qkv' matches no layer of Bigram; LoRA cannot adapt it"),
    # Blocks without a feed-forward layer (Mamba-2's): the default targets name one.
    ("no_mlp", ["qkv", "proj", "mlp"], r"LoRA target 'mlp' matches no layer of Transformer; choose finetune.targets "
                                       r"from \['proj', 'qkv'\]"),
])
def test_a_target_that_matches_nothing_is_one_line_naming_the_valid_ones(name, targets, message):
    model = dataclasses.replace(tiny_config("gpt_rope"), ffn_pattern=[]).build() if name == "no_mlp" else make(name)
    with pytest.raises(UserError, match="^" + message + "$"):
        LoRA(targets=targets).apply(model)
    assert all(p.requires_grad for p in model.parameters()) and not adapted_layers(model)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A small char GPT trained briefly on tinyshakespeare: the base to fine-tune."""
    folder = tmp_path_factory.mktemp("pretrained")
    # GPT-2's init and tie learn slower than gpt's defaults: the base leaves LoRA's 100 steps room to improve on it.
    train(compose_train(folder, "model=gpt", "model.init=gpt2", "model.tie_embeddings=true", "trainer.max_steps=150",
                        "trainer.val_check_interval=150", "data.batch_size=16", "optim.lr=1e-2"))
    return folder / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, pretrained):
    """A LoRA run from the pretrained checkpoint: its best val loss, trained model, and last checkpoint."""
    folder = tmp_path_factory.mktemp("lora")
    cfg = compose_train(folder, "model=gpt", f"init_from={pretrained}", "finetune=lora", "finetune.r=8",
                        "finetune.alpha=32", "trainer.max_steps=100", "trainer.val_check_interval=100",
                        "data.batch_size=16", "optim.lr=2e-2")
    datamodule, lit, trainer = build(cfg)
    trainer.fit(lit, datamodule=datamodule, weights_only=False)
    return lit.best_val_loss, lit.model, folder / "run" / "checkpoints" / "last.ckpt"


def test_lora_run_lowers_validation_loss_of_the_pretrained_model(pretrained, lora_run):
    best_val_loss, _, _ = lora_run
    assert best_val_loss < read_checkpoint(pretrained)["lmzoo"]["best_val_loss"] - 0.02


def test_lora_leaves_the_base_bit_for_bit_and_saves_only_the_adapters(pretrained, lora_run):
    _, trained, last = lora_run
    pretrained_state = read_checkpoint(pretrained)["state_dict"]
    base = {"model." + name.replace(".base.", "."): tensor for name, tensor in trained.state_dict().items()}
    assert all(torch.equal(base[name], tensor) for name, tensor in pretrained_state.items())
    checkpoint = read_checkpoint(last)
    assert checkpoint["state_dict"] and all("lora_" in name for name in checkpoint["state_dict"])
    assert checkpoint["lmzoo"]["finetune"] == {"method": "lora", "r": 8, "alpha": 32, "targets": ["qkv", "proj", "mlp"],
                                               "dropout": 0.0, "base": str(pretrained.resolve()),
                                               "base_sha256": weights_sha256(merge(load_model(pretrained)[0]).state_dict())}
    model, _, _ = load_model(last)
    idx = torch.randint(0, 65, (2, 32))
    assert torch.equal(model(idx).logits, trained.eval()(idx).logits)


def test_lora_checkpoint_exports_only_merged(tmp_path, lora_run):
    transformers = pytest.importorskip("transformers")
    _, _, last = lora_run
    with pytest.raises(UserError, match="holds LoRA adapters; pass merge=true"):
        export_checkpoint(str(last), str(tmp_path / "unmerged"))
    export_checkpoint(str(last), str(tmp_path / "merged"), merge_adapters=True)
    model, _, _ = load_model(last)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    idx = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx).logits, atol=1e-5, rtol=0)


def test_full_fine_tuning_starts_from_the_pretrained_weights(tmp_path, pretrained):
    result = train(compose_train(tmp_path, "model=gpt", f"init_from={pretrained}", "optim=finetune",
                                 "trainer.max_steps=4", "trainer.val_check_interval=4"))
    # A fresh model after 4 steps at lr 1e-4 is still near uniform, log(65) = 4.17.
    assert result["best_val_loss"] < math.log(65) - 1.0


def test_init_from_another_architecture_says_which_model_to_pass(tmp_path, pretrained):
    with pytest.raises(UserError, match=r"holds another architecture than model= builds; pass model=gpt$"):
        train(compose_train(tmp_path, "model=gpt_rope", f"init_from={pretrained}"))


def test_init_from_with_another_tokenizer_says_so(tmp_path, pretrained):
    with pytest.raises(UserError, match=r"uses the char tokenizer \(65 symbols\) but the data uses the tiktoken gpt2"):
        train(compose_train(tmp_path, "model=gpt", "data=shakespeare", f"init_from={pretrained}"))


def test_finetune_without_init_from_says_so(tmp_path):
    with pytest.raises(UserError, match="needs pretrained weights; pass init_from"):
        train(compose_train(tmp_path, "finetune=lora"))


def test_resumed_lora_run_ends_with_the_same_adapters(tmp_path, pretrained):
    common = [f"init_from={pretrained}", "model=gpt", "finetune=lora", "finetune.dropout=0.1", "trainer.max_steps=6",
              "trainer.val_check_interval=3", "callbacks.model_checkpoint.save_top_k=-1",
              "callbacks.model_checkpoint.filename='step{step}'"]
    train(compose_train(tmp_path / "straight", *common))
    halfway = tmp_path / "straight" / "run" / "checkpoints" / "step3.ckpt"
    train(compose_train(tmp_path / "resumed", *common, f"ckpt_path={halfway}"))
    expected = read_checkpoint(tmp_path / "straight" / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    actual = read_checkpoint(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    assert expected.keys() == actual.keys() and all(torch.equal(actual[k], v) for k, v in expected.items())


def another_model_of_its_shape(source, path):
    checkpoint = read_checkpoint(source)
    checkpoint["state_dict"] = {name: tensor + 0.01 for name, tensor in checkpoint["state_dict"].items()}
    torch.save(checkpoint, path)


def test_lora_checkpoint_whose_base_was_replaced_by_another_model_of_its_shape_is_refused(tmp_path, pretrained, lora_run):
    _, _, last = lora_run
    another_model_of_its_shape(pretrained, tmp_path / "other.ckpt")
    adapters = read_checkpoint(last)
    adapters["lmzoo"]["finetune"]["base"] = str(tmp_path / "other.ckpt")
    torch.save(adapters, tmp_path / "adapters.ckpt")
    with pytest.raises(UserError, match="but the weights there are not that base's .*put the original base back"):
        load_model(tmp_path / "adapters.ckpt")


def test_resuming_a_lora_run_with_init_from_another_base_is_refused(tmp_path, pretrained, lora_run):
    _, _, last = lora_run
    another_model_of_its_shape(pretrained, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match=f"init_from={tmp_path / 'other.ckpt'} is not the base {last} was trained on"):
        train(compose_train(tmp_path, "model=gpt", f"init_from={tmp_path / 'other.ckpt'}", "finetune=lora",
                            f"ckpt_path={last}"))


def test_lora_checkpoint_whose_base_is_gone_says_so(tmp_path, lora_run):
    _, _, last = lora_run
    checkpoint = read_checkpoint(last)
    checkpoint["lmzoo"]["finetune"]["base"] = str(tmp_path / "moved.ckpt")
    torch.save(checkpoint, tmp_path / "adapters.ckpt")
    with pytest.raises(UserError, match="holds LoRA adapters for the base .*moved.ckpt, which is missing"):
        load_model(tmp_path / "adapters.ckpt")
