"""Checkpoints written by lmzoo 0.1.0 (tests/fixtures/v0.1, see its README) load, sample, evaluate and resume."""

import json
import math
import shutil

import pytest
import torch
from helpers import FIXTURES, SHAKESPEARE, compose_config, compose_train

from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.checkpoints.record import upgrade_record
from lmzoo.cli.evaluate import evaluate_checkpoint
from lmzoo.data import CharTokenizer
from lmzoo.inference.sampling import SamplingSettings, sample_text
from lmzoo.models import preset_config
from lmzoo.models.presets import model_overrides, preset_of
from lmzoo.training.run import train

LEGACY = FIXTURES / "v0.1"
RECORDED = json.loads((LEGACY / "checkpoints.json").read_text())
# Two steps more than the fixtures were trained for, asking for another schedule than theirs.
RESUME = ["trainer=debug", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "sample_tokens=0",
          "trainer.max_steps=6", "trainer.val_check_interval=2", "optim.schedule=wsd"]
KINDS = ["bigram", "mlp", "gpt", "gpt_rope", "block_scaling", "moe", "moa_moe"]
# The fixtures' context.
RECORDED_BLOCK = 16


# Written by lmzoo 0.2.0 (tests/fixtures/README.md): a folder of each transformer preset, and a checkpoint.
V02 = FIXTURES / "v0.2"
RECORDED_V02 = json.loads((V02 / "fixtures.json").read_text())


def recorded_logits_match(model, name, recorded=RECORDED):
    torch.manual_seed(0)
    idx = torch.randint(0, 65, (1, 16))
    with torch.no_grad():
        logits = model(idx).logits
    assert logits.double().sum().item() == pytest.approx(recorded[name]["logits_sum"], abs=1e-4)
    assert logits[0, -1, :4].tolist() == pytest.approx(recorded[name]["logits_00"], abs=1e-6)


@pytest.fixture
def lora_checkpoint(tmp_path):
    """The LoRA fixture, pointed at the gpt fixture as its base (it names the folder it was written in)."""
    checkpoint = torch.load(LEGACY / "gpt_lora.ckpt", weights_only=False)
    checkpoint["lmzoo"]["finetune"]["base"] = str(LEGACY / "gpt.ckpt")
    torch.save(checkpoint, tmp_path / "gpt_lora.ckpt")
    return tmp_path / "gpt_lora.ckpt"


@pytest.mark.parametrize("name", KINDS)
def test_a_0_1_checkpoint_loads_to_its_logits_and_samples(name):
    model, tokenizer, info = load_model(LEGACY / f"{name}.ckpt")
    recorded_logits_match(model, name)
    assert info.global_step == 4 and info.version == "0.1.0" and math.isfinite(info.best_val_loss)
    text = sample_text(model, tokenizer, "ROMEO:", SamplingSettings(max_new_tokens=30, temperature=0))
    assert len(text) == 30 and set(text) <= set(tokenizer.chars)


def test_a_0_1_lora_checkpoint_and_a_0_1_folder_load_to_their_logits(lora_checkpoint):
    model, _, info = load_model(lora_checkpoint)
    recorded_logits_match(model, "gpt_lora")
    assert info.finetune["targets"] == ["qkv", "proj", "mlp"]
    folder, _, _ = load_model(LEGACY / "moe_folder")
    recorded_logits_match(folder, "moe_folder")


@pytest.mark.parametrize("name", ["mlp", "moa_moe"])
def test_a_0_1_checkpoint_evaluates(tmp_path, name):
    shutil.copy(LEGACY / f"{name}.ckpt", tmp_path / "last.ckpt")
    result = evaluate_checkpoint(compose_config("evaluate", f"ckpt={tmp_path / 'last.ckpt'}", "data=shakespeare_char",
                                                f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}"))
    # The whole split gives about what the run's validation windows gave.
    assert result["loss"] == pytest.approx(read_checkpoint(tmp_path / "last.ckpt")["lmzoo"]["best_val_loss"], abs=0.05)


def test_a_0_1_gpt_exports_as_the_tied_gpt2_it_was(tmp_path):
    """gpt was tied before its default became untied; the checkpoint's own config keeps it tied."""
    transformers = pytest.importorskip("transformers")
    export_checkpoint(str(LEGACY / "gpt.ckpt"), str(tmp_path / "hf"))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf_model.config.tie_word_embeddings and hf_model.lm_head.weight is hf_model.transformer.wte.weight
    model, _, _ = load_model(LEGACY / "gpt.ckpt")
    idx = torch.randint(0, 65, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx).logits, atol=1e-5, rtol=0)


def settings_of(path) -> list[str]:
    """The overrides that compose the model of the checkpoint at `path` in this release's spelling: its preset and
    what differs from it (checkpoints.json has those 0.1 trained it with, in 0.1's)."""
    config = load_model(path)[0].config
    name = preset_of(config)
    sizes = {key: getattr(config, key) for key in ("vocab_size", "block_size") if hasattr(config, key)}
    return [f"model={name}", f"block_size={RECORDED_BLOCK}", *model_overrides(preset_config(name, **sizes), config)]


@pytest.mark.parametrize("name", KINDS)
def test_a_0_1_checkpoint_resumes_and_is_saved_in_the_current_layout(tmp_path, name):
    shutil.copy(LEGACY / f"{name}.ckpt", tmp_path / "old.ckpt")
    result = train(compose_train(tmp_path, *RESUME, *settings_of(tmp_path / "old.ckpt"),
                                 f"ckpt_path={tmp_path / 'old.ckpt'}", tiny=False))
    assert result["steps"] == 6
    resumed = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 6 and resumed["lmzoo"]["version"] != "0.1.0"
    old = read_checkpoint(tmp_path / "old.ckpt")
    assert resumed["state_dict"].keys() == old["state_dict"].keys()
    assert any(not torch.equal(resumed["state_dict"][k], v) for k, v in old["state_dict"].items())
    # The warmup-cosine it was trained with goes on: 2 warmup steps, at the floor after step 4.
    schedule = resumed["lr_schedulers"][0]["lr_lambdas"][0]
    assert old["lr_schedulers"][0]["lr_lambdas"][0] == {"warmup": 2, "decay": 4, "floor": 0.1}
    assert (schedule["warmup"], schedule["decay"], schedule["floor"], schedule["shape"]) == (2, 4, 0.1, "cosine")
    assert resumed["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.1 * resumed["lr_schedulers"][0]["base_lrs"][0])


def test_a_0_1_lora_checkpoint_resumes(tmp_path, lora_checkpoint):
    result = train(compose_train(tmp_path, *RESUME, *RECORDED["gpt_lora"]["overrides"], f"init_from={LEGACY / 'gpt.ckpt'}",
                                 f"ckpt_path={lora_checkpoint}", tiny=False))
    assert result["steps"] == 6
    model, tokenizer, _ = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(tokenizer, CharTokenizer) and any("lora_" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("name", sorted(name for name in RECORDED_V02 if (V02 / name).is_dir()))
def test_a_0_2_folder_loads_to_its_logits_in_this_releases_config(name):
    """lmzoo 0.2 kept every mixer's knobs among the trunk's: the record is upgraded to this release's config, which
    builds the same model and is its preset's."""
    model, _, info = load_model(V02 / name)
    recorded_logits_match(model, name, RECORDED_V02)
    stored = json.loads((V02 / name / "lmzoo.json").read_text())
    assert info.version == "0.2.0" and info.config != stored["config"] and preset_of(model.config) == name


def test_a_0_2_checkpoint_resumes_with_its_settings_in_this_releases_spelling(tmp_path):
    shutil.copy(V02 / "hybrid.ckpt", tmp_path / "old.ckpt")
    model, _, _ = load_model(tmp_path / "old.ckpt")
    recorded_logits_match(model, "hybrid_ckpt", RECORDED_V02)
    name = preset_of(model.config)
    overrides = model_overrides(preset_config(name, vocab_size=65, block_size=model.block_size), model.config)
    result = train(compose_train(tmp_path, *RESUME[:-1], f"model={name}", f"block_size={model.block_size}",
                                 *overrides, f"ckpt_path={tmp_path / 'old.ckpt'}", tiny=False))
    assert result["steps"] == 6
    resumed = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert "mixers" in resumed["lmzoo"]["config"] and "window" not in resumed["lmzoo"]["config"]


def test_a_0_2_pattern_longer_than_its_model_is_cut_to_the_layers_it_built():
    """0.2 accepted a layer pattern longer than n_layer (model=hybrid model.n_layer=2), whose parts past n_layer were
    no layer's; such a record loads as the model it built, which this release's config refuses to describe otherwise."""
    stored = json.loads((V02 / "hybrid" / "lmzoo.json").read_text())
    pattern = stored["config"]["layer_pattern"]
    config = upgrade_record({**stored, "config": {**stored["config"], "n_layer": 2}})["config"]
    assert config["layer_pattern"] == pattern[:2] and list(config["mixers"]) == list(dict.fromkeys(pattern[:2]))
