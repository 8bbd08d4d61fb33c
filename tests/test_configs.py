"""Every file in conf/ composes and builds what its group promises."""

import pytest
import torch
from helpers import REPO, compose_config, compose_train
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import OmegaConf

import lmzoo.conf  # noqa: F401  (registers the nodes the options extend)

from lmzoo.cli.generate import sampling_settings
from lmzoo.cli.hydra_command import job_gpu
from lmzoo.cli.quoting import quote_literal_values
from lmzoo.data import DataConfig, prepare
from lmzoo.data.tokenizer import tokenizer_from_spec
from lmzoo.inference import SamplingSettings
from lmzoo.models import LanguageModel, ModelConfig
from lmzoo.models.lora import LoRA
from lmzoo.models.presets import architecture_defaults, flat, merged, preset, preset_config, preset_of
from lmzoo.training.optim import OptimConfig
from lmzoo.training.run import build

CONF = REPO / "conf"
# What each option of a group must build, beyond its group's type.
TOKENIZER_KINDS = {"char": "char", "gpt2": "tiktoken", "cl100k_base": "tiktoken", "bpe": "bpe"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_prepare_their_named_bins(tmp_path, name):
    config = instantiate(compose_train(tmp_path, f"data={name}").data, _convert_="all")
    assert isinstance(config, DataConfig) and config.name == name
    meta = prepare(config, progress=False)
    assert config.data_dir.parent == tmp_path / "data" / name and (config.data_dir / "train.bin").is_file()
    # tinyshakespeare has 65 distinct characters; the BPE data sets use GPT-2's vocabulary.
    assert meta.vocab_size == (65 if meta.tokenizer["kind"] == "char" else 50257)


@pytest.mark.parametrize("name", options("tokenizer"))
def test_tokenizer_configs_build_their_kind_and_round_trip(tmp_path, name):
    # A small vocabulary keeps the BPE quick; the other tokenizers' vocabularies are fixed.
    small = ["data.tokenizer.vocab_size=300"] if name == "bpe" else []
    config = instantiate(compose_train(tmp_path, f"tokenizer={name}", *small).data, _convert_="all")
    meta = prepare(config, progress=False)
    assert meta.tokenizer["kind"] == TOKENIZER_KINDS[name]
    tokenizer = tokenizer_from_spec(meta.tokenizer)
    assert tokenizer.decode(tokenizer.encode("First Citizen:")) == "First Citizen:"


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_build_their_model(tmp_path, name):
    cfg = compose_train(tmp_path, f"model={name}", tiny=False)
    config = instantiate(cfg.model, vocab_size=65, _convert_="all")
    model = config.build()
    assert isinstance(config, ModelConfig) and isinstance(model, LanguageModel)
    # Every knob the preset sets reaches the config directly; the config keeps the settings of the mixers it holds.
    kept = flat(config.as_dict())
    for key, value in flat(OmegaConf.to_container(cfg.model, resolve=True)).items():
        assert key == "_target_" or kept.get(key, value) == value, key
    held = {f"{group}.{name}" for group in ("mixers", "ffns") for name in getattr(config, group, {})}
    assert all(key in kept for key in flat(OmegaConf.to_container(cfg.model, resolve=True)) if key != "_target_"
               and not (key.startswith(("mixers.", "ffns.")) and ".".join(key.split(".")[:2]) not in held))
    # Fixed-context models read fewer tokens than the training windows; attention models read the windows.
    assert model.block_size == {"bigram": 1, "mlp": cfg.model.get("context")}.get(name, cfg.block_size)


@pytest.mark.parametrize("name", options("model"))
def test_a_preset_sets_only_what_differs_from_its_class_and_composes_every_field(tmp_path, name):
    """conf/model/NAME.yaml is one row of the preset table: the class's defaults come from its architecture node,
    so the composed config (what --cfg job prints and model.KEY= overrides) has every field, and the table read
    without Hydra (preset_config) builds the same config."""
    config_class, _, extends, own = preset(name)
    defaults = architecture_defaults(config_class)
    base = flat(merged(defaults, preset(extends).settings if extends else {}))
    assert {key: value for key, value in flat(own).items() if base[key] == value} == {}, \
        f"conf/model/{name}.yaml repeats what it extends"
    cfg = compose_train(tmp_path, f"model={name}", tiny=False)
    assert set(cfg.model) == set(defaults)
    composed = instantiate(cfg.model, vocab_size=65, _convert_="all")
    sizes = {"vocab_size": 65, **({"block_size": cfg.block_size} if "block_size" in cfg.model else {})}
    assert as_lists(composed.as_dict()) == as_lists(preset_config(name, **sizes).as_dict())
    # The exporters, init_from and resuming tell the presets apart by their class and its choices.
    found = preset_of(composed)
    assert preset(found).config_class is config_class
    assert as_lists(preset_config(found, **sizes).choice_values()) == as_lists(composed.choice_values())


def chain(group: str, name: str) -> tuple[dict, dict, bool]:
    """Option `name` of `group`: what its own file sets; what it extends, composed (the nodes lmzoo.conf registers,
    `/GROUP/CLASS`, and other options of the group, which may extend a node in turn); and whether a node is in that."""
    own = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"), resolve=False)
    base, from_node = {}, False
    for entry in [str(entry).split("@")[0] for entry in own.pop("defaults", []) if str(entry) != "_self_"]:
        if entry.startswith("/"):
            node = OmegaConf.to_container(ConfigStore.instance().load(f"{entry[1:]}.yaml").node, resolve=False)
            base, from_node = OmegaConf.to_container(OmegaConf.merge(base, node)), True
        else:
            extended_own, extended_base, extended_from_node = chain(group, entry)
            base = OmegaConf.to_container(OmegaConf.merge(base, extended_base, extended_own))
            from_node = from_node or extended_from_node
    return own, base, from_node


def repeated(own: dict, base: dict, prefix: str = "") -> list[str]:
    """The keys of `own` (nested ones too) whose values are those of `base`."""
    found = []
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            found += repeated(value, base[key], f"{prefix}{key}.")
        elif key in base and value == base[key]:
            found.append(f"{prefix}{key}")
    return found


NODE_GROUPS = sorted({path.parent.name for path in CONF.glob("*/*.yaml") if chain(path.parent.name, path.stem)[2]})


@pytest.mark.parametrize("path", [path for group in NODE_GROUPS for path in sorted((CONF / group).glob("*.yaml"))],
                         ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_an_option_holds_only_what_differs_from_the_class_defaults_it_extends(path):
    """The defaults of a group's class live in the class (registered as a node by lmzoo.conf): each option of a group
    whose options extend such a node extends it too (directly or through another option), and sets only what
    differs from it; an option that sets nothing (finetune=none) builds nothing."""
    own, base, from_node = chain(path.parent.name, path.stem)
    assert from_node or not own, f"{path.relative_to(REPO)} does not extend its group's class node"
    assert repeated(own, base) == [], f"{path.relative_to(REPO)} repeats the defaults it extends"


def test_the_configs_show_every_setting_of_their_classes():
    """`--cfg job` shows every value: the composed optim, data and tune blocks hold every field of their class."""
    cfg = compose_config("tune", "finetune=lora")
    for section, name in (("optim", "OptimConfig"), ("data", "DataConfig"), ("finetune", "LoRA"),
                          ("tune", "TuneSettings")):
        assert set(cfg[section]) == set(ConfigStore.instance().load(f"settings/{name}.yaml").node), section


def as_lists(settings: dict) -> dict:
    """Tuples as lists: a config from the command line holds lists where the dataclass's defaults are tuples."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}


@pytest.mark.parametrize("name", options("optim"))
def test_optim_configs(tmp_path, name):
    optim = instantiate(compose_train(tmp_path, f"optim={name}", "optim.lr=0.002").optim)
    assert isinstance(optim, OptimConfig) and optim.lr == 0.002


@pytest.mark.parametrize("name", options("finetune"))
def test_finetune_configs(tmp_path, name):
    recipe = compose_train(tmp_path, f"finetune={name}").finetune
    # finetune=none is empty: every parameter trains.
    assert bool(recipe) == (name != "none")
    if recipe:
        assert isinstance(instantiate(recipe, _convert_="all"), LoRA)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_configs(tmp_path, name, monkeypatch):
    # The gpu preset is instantiated on the CPU here, keeping its precision.
    cfg = compose_train(tmp_path, f"trainer={name}", "trainer.accelerator=cpu", tiny=False)
    if name == "fsdp":
        # Lightning's FSDP needs CUDA: on the CPU only its strategy is built.
        assert type(instantiate(cfg.trainer.strategy)).__name__ == "FSDPStrategy"
        return
    if name == "gpu_per_job":
        # Its devices follow the sweep job's number: job 5 of a machine with 4 GPUs trains on GPU 1.
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
        assert OmegaConf.to_container(cfg.trainer)["devices"] == "${lmzoo.job_gpu:${hydra:job.num}}"
        assert job_gpu(5) == [1]
        return
    _, lit, trainer = build(cfg)
    assert trainer.max_steps == cfg.trainer.max_steps and trainer.checkpoint_callback is not None
    # trainer.precision=auto is resolved before the Trainer is built (lmzoo.training.acceleration), and recorded.
    assert trainer.precision == lit.provenance["config"]["trainer"]["precision"] != "auto"


@pytest.mark.parametrize("name", options("hydra/launcher"))
def test_launcher_presets_extend_hydras_launchers(name):
    """hydra/launcher=parallel is joblib's launcher, slurm submitit's: their plugins are installed with the test extra."""
    launcher = compose_config("train", f"hydra/launcher={name}", return_hydra_config=True).hydra.launcher
    assert launcher._target_.rsplit(".", 1)[1] == {"parallel": "JoblibLauncher", "slurm": "SlurmLauncher"}[name]


@pytest.mark.parametrize("name", ["generate", "evaluate", "describe", "export", "prepare"])
def test_commands_that_only_read_share_one_hydra_block(name):
    """They run in the current folder and leave no .hydra/ or log files behind."""
    cfg = compose_config(name, return_hydra_config=True)
    assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None
    assert cfg.hydra.job_logging == {"version": 1, "root": None, "disable_existing_loggers": False}


def test_generate_samples_with_the_defaults_of_sampling_settings():
    assert sampling_settings(compose_config("generate", "ckpt=x")) == SamplingSettings()
    assert sampling_settings(compose_config("generate", "ckpt=x", "temperature=0", "stop=[END]")) == SamplingSettings(
        temperature=0.0, stop=("END",))


@pytest.mark.parametrize("typed", ["宝玉道", "🙂", "Hello, world", "a=b", "it's", 'say "hi"', "back\\slash", "ends\\",
                                   "${seed}", "\\${seed}", "[verse]x", "", "null", "1e5", "~/notes", "@FILE"])
def test_literal_values_reach_the_config_as_typed(typed):
    """generate, evaluate, describe and export quote the values of their path and prompt keys for Hydra."""
    cfg = compose_config("generate", *quote_literal_values(["ckpt=x", f"prompt={typed}"], ("ckpt", "prompt")))
    assert cfg.prompt == typed and cfg.ckpt == "x"


def test_literal_lists_quote_each_item():
    args = quote_literal_values(["prompt=[宝玉道,'Hello, world', a=b]"], ("prompt",))
    assert list(compose_config("generate", "ckpt=x", *args).prompt) == ["宝玉道", "Hello, world", "a=b"]
