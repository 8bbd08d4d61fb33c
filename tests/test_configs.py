"""Every file in conf/ composes and instantiates."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import REPO, compose_train

from lmzoo.data import TokenDataModule
from lmzoo.lora import LoRA
from lmzoo.models import LanguageModel
from lmzoo.optim import OptimConfig
from lmzoo.training import build_trainer

CONF = REPO / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("data"))
def test_data_configs(tmp_path, name):
    datamodule = instantiate(compose_train(tmp_path, f"data={name}").data)
    assert isinstance(datamodule, TokenDataModule) and datamodule.name == name
    datamodule.prepare_data()
    assert datamodule.vocab_size > 0


@pytest.mark.parametrize("name", options("tokenizer"))
def test_tokenizer_configs(tmp_path, name):
    # A small vocabulary keeps the BPE quick; the other tokenizers ignore it.
    datamodule = instantiate(compose_train(tmp_path, f"tokenizer={name}", "data.tokenizer.vocab_size=300").data)
    datamodule.prepare_data()
    assert datamodule.meta["tokenizer"]["kind"] == datamodule.tokenizer_config["kind"]
    assert datamodule.tokenizer.decode(datamodule.tokenizer.encode("First Citizen:")) == "First Citizen:"


@pytest.mark.parametrize("name", options("model"))
def test_model_configs(tmp_path, name):
    cfg = compose_train(tmp_path, f"model={name}", tiny=False)
    model = instantiate(cfg.model, vocab_size=65, optim=dict(instantiate(cfg.optim).__dict__))
    # Fixed-context models read fewer tokens than the training windows; attention models read the windows.
    context = {"bigram": 1, "mlp": cfg.model.get("context")}.get(name, cfg.block_size)
    assert isinstance(model, LanguageModel) and model.block_size == context


@pytest.mark.parametrize("name", options("optim"))
def test_optim_configs(tmp_path, name):
    assert isinstance(instantiate(compose_train(tmp_path, f"optim={name}").optim), OptimConfig)


@pytest.mark.parametrize("name", options("finetune"))
def test_finetune_configs(tmp_path, name):
    recipe = compose_train(tmp_path, f"finetune={name}").finetune
    assert isinstance(instantiate(recipe, _convert_="all"), LoRA) if recipe else name == "none"


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_configs(tmp_path, name):
    # The gpu preset is instantiated on the CPU here, keeping its precision.
    cfg = compose_train(tmp_path, f"trainer={name}", "trainer.accelerator=cpu", tiny=False)
    if name == "fsdp":
        # Lightning's FSDP needs CUDA: on the CPU only its strategy is built.
        assert type(instantiate(cfg.trainer.strategy)).__name__ == "FSDPStrategy"
        return
    trainer = build_trainer(cfg)
    assert trainer.max_steps == cfg.trainer.max_steps and trainer.checkpoint_callback is not None


def test_every_group_is_tested():
    assert {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "data", "tokenizer", "model", "optim", "finetune", "trainer", "callbacks", "logger"}
    assert {p.name for p in Path(CONF).glob("*.yaml")} == {
        "train.yaml", "prepare.yaml", "generate.yaml", "evaluate.yaml", "inspect.yaml", "export.yaml"}
