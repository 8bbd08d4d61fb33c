"""Fine-tuning from pretrained weights: LoRA adapters on a frozen base, full fine-tuning, and bad input."""

import math

import pytest
import torch

from conftest import compose_train

from lmzoo.checkpoint import load_model, read_checkpoint
from lmzoo.errors import UserError
from lmzoo.lora import LoRA, LoRALinear, merge
from lmzoo.models import GPT, GPTRope
from lmzoo.training import build, train


def tiny_gpt(n_layer=2, n_embd=32):
    torch.manual_seed(0)
    return GPT(vocab_size=65, block_size=16, n_layer=n_layer, n_head=2, n_embd=n_embd).eval()


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
    adapted = model(idx)
    assert not torch.allclose(adapted, tiny_gpt()(idx), atol=1e-3)
    merged = merge(model)
    assert not any(isinstance(module, LoRALinear) for module in merged.modules())
    torch.testing.assert_close(merged(idx), adapted, atol=1e-5, rtol=0)


def test_adapters_start_at_zero_so_the_adapted_model_equals_its_base():
    idx = torch.randint(0, 65, (2, 16))
    model = GPTRope(vocab_size=65, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32).eval()
    before = model(idx)
    assert torch.equal(LoRA(r=2, alpha=4).apply(model)(idx), before)


def test_a_target_that_names_no_layer_lists_the_valid_names():
    with pytest.raises(UserError, match=r"LoRA target 'attention' names no layer; choose finetune.targets from "
                                        r"\['mlp', 'proj', 'qkv'\]"):
        LoRA(targets=["qkv", "attention"])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A small char GPT trained briefly on tinyshakespeare: the base to fine-tune."""
    folder = tmp_path_factory.mktemp("pretrained")
    train(compose_train(folder, "model=gpt", "trainer.max_steps=150", "trainer.val_check_interval=150",
                        "data.batch_size=16", "optim.lr=1e-2"))
    return folder / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, pretrained):
    """A LoRA run from the pretrained checkpoint: its best val loss, trained model, and last checkpoint."""
    folder = tmp_path_factory.mktemp("lora")
    cfg = compose_train(folder, "model=gpt", f"init_from={pretrained}", "finetune=lora", "finetune.r=8",
                        "finetune.alpha=32", "trainer.max_steps=100", "trainer.val_check_interval=100",
                        "data.batch_size=16", "optim.lr=2e-2")
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule, weights_only=False)
    return model.best_val_loss, model, folder / "run" / "checkpoints" / "last.ckpt"


def test_lora_run_lowers_validation_loss_of_the_pretrained_model(pretrained, lora_run):
    best_val_loss, _, _ = lora_run
    assert best_val_loss < read_checkpoint(pretrained)["lmzoo"]["best_val_loss"] - 0.02


def test_lora_leaves_the_base_bit_for_bit_and_saves_only_the_adapters(pretrained, lora_run):
    _, trained, last = lora_run
    pretrained_state = read_checkpoint(pretrained)["state_dict"]
    base = {name.replace(".base.", "."): tensor for name, tensor in trained.state_dict().items()}
    assert all(torch.equal(base[name], tensor) for name, tensor in pretrained_state.items())
    checkpoint = read_checkpoint(last)
    assert checkpoint["state_dict"] and all("lora_" in name for name in checkpoint["state_dict"])
    assert checkpoint["lmzoo"]["finetune"] == {"method": "lora", "r": 8, "alpha": 32, "targets": ["qkv", "proj", "mlp"],
                                               "dropout": 0.0, "base": str(pretrained.resolve())}
    model, _, _ = load_model(last)
    idx = torch.randint(0, 65, (2, 32))
    assert torch.equal(model(idx), trained.eval()(idx))


def test_lora_checkpoint_exports_only_merged(tmp_path, lora_run):
    transformers = pytest.importorskip("transformers")
    _, _, last = lora_run
    from lmzoo.interop import export_checkpoint

    with pytest.raises(UserError, match="holds LoRA adapters; pass merge=true"):
        export_checkpoint(str(last), str(tmp_path / "unmerged"))
    export_checkpoint(str(last), str(tmp_path / "merged"), merge=True)
    model, _, _ = load_model(last)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    idx = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx), atol=1e-5, rtol=0)


def test_full_fine_tuning_starts_from_the_pretrained_weights(tmp_path, pretrained):
    result = train(compose_train(tmp_path, "model=gpt", f"init_from={pretrained}", "optim=finetune",
                                 "trainer.max_steps=4", "trainer.val_check_interval=4"))
    # A fresh model after 4 steps at lr 1e-4 is still near uniform, log(65) = 4.17.
    assert result["best_val_loss"] < math.log(65) - 1.0


def test_init_from_another_architecture_says_which_model_to_pass(tmp_path, pretrained):
    with pytest.raises(UserError, match=r"holds a GPT but model= builds GPTRope; pass model=gpt$"):
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


def test_lora_checkpoint_whose_base_is_gone_says_so(tmp_path, lora_run):
    _, _, last = lora_run
    checkpoint = read_checkpoint(last)
    checkpoint["lmzoo"]["finetune"]["base"] = str(tmp_path / "moved.ckpt")
    torch.save(checkpoint, tmp_path / "adapters.ckpt")
    with pytest.raises(UserError, match="holds LoRA adapters for the base .*moved.ckpt, which is missing"):
        load_model(tmp_path / "adapters.ckpt")
