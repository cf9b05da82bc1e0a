"""Typed run configuration: one dataclass per component, composed into ``RunConfig``.

Every run saves its ``RunConfig`` as ``config.json`` beside the weights. Loading rejects unknown keys, and
``--set section.key=value`` overrides from the command line go through the same strict path.

The objective's options live in the section ``objective``: a mapping of the options given (``--set
objective.alpha0=0.5``), any subset of the fields of the chosen objective's ``Config`` dataclass
(``OBJECTIVES.get(train.objective).Config``); ``RunConfig.objective_config()`` resolves it into that dataclass
(validated there, and an option the objective does not take is an error), and ``config.json`` holds every field.
``config.json`` carries ``format_version`` (``FORMAT_VERSION``); one without it (format 1, the options in
``train``) is migrated on load.

A numeric field's valid values are declared with it (``ranged(default, "[0, 1)")``) and checked, with every
field's type, in one place, ``RunConfig.validate`` (``check_fields``): a config.json or a ``--set`` with a string
where an int belongs, or a value out of range, is a one-line error that names the field and the range.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

from dlm.errors import DlmError


def ranged(default, interval: str, meaning: str = "", flag: str = ""):
    """A field whose valid values are ``interval`` ("> 0", ">= 0", "[0, 1)", "(0, 1]", ...; no upper end: inf is
    valid), checked by ``check_fields``; ``meaning`` says what a boundary value does ("0 = off"), ``flag`` is the
    command-line flag that sets it, named in the error."""
    return field(default=default, metadata={"interval": interval, "meaning": meaning, "flag": flag})


@dataclass
class DataConfig:
    name: str = "austen"  # "austen" (bundled), a .txt file or folder, "hf:NAME[:CONFIG]", or a saved HF dataset
    text_column: str = "text"  # column read from a Hugging Face dataset
    val_fraction: float = ranged(0.05, "(0, 1)")  # held-out tail for corpora without their own validation split
    seq_len: int = ranged(256, "> 0")  # tokens per packed training sequence
    tokenizer: str | None = None  # path to a tokenizer.json; None trains a byte-level BPE on the training split
    vocab_size: int = 8192  # size of the trained BPE vocabulary, special tokens included
    encoding: str = "utf-8"  # of local .txt files (dlm train --encoding); text that is not valid in it is refused


@dataclass
class ModelConfig:
    vocab_size: int = ranged(8192, "> 0")  # set from the tokenizer at training time
    d_model: int = ranged(384, "> 0")
    n_layers: int = ranged(6, "> 0")
    n_heads: int = ranged(6, "> 0")
    d_ff: int = ranged(1536, "> 0")
    max_seq_len: int = ranged(256, "> 0")  # the context the model is trained for; prompts + generation must fit
    causal: bool = False  # default attention: causal (AR) or bidirectional (diffusion)
    time_conditioning: bool = False  # adaLN conditioning on t
    tie_embeddings: bool = False
    # > 0: token embeddings of this width, projected to and from d_model (Diffusion-LM)
    embed_dim: int = ranged(0, ">= 0", "0 = embeddings of width d_model")
    rope_base: float = ranged(10000.0, "> 0")  # RoPE's theta (rope_theta in Hugging Face configs)
    dropout: float = ranged(0.0, "[0, 1)")
    # the Llama family (arch "llama": separate q/k/v/o projections, grouped-query attention, SwiGLU, no biases;
    # "dlm": the original fused-qkv / GELU layout, which the fields below do not apply to)
    arch: str = "dlm"
    n_kv_heads: int = ranged(0, ">= 0", "0 = n_heads")  # key-value heads (fewer: grouped-query attention)
    head_dim: int = ranged(0, ">= 0", "0 = d_model // n_heads")  # width of a head
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    norm_eps: float = ranged(0.0, ">= 0", "0 = torch's default")  # RMSNorm epsilon (torch's: the machine epsilon)
    rope_scaling: str = "none"  # "none" or "llama3" (Llama 3.1's frequency-dependent scaling)
    rope_factor: float = 8.0  # llama3: how much the long wavelengths are slowed
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = ranged(8192, "> 0")  # llama3: the context the base model was trained for
    # Dream's shifted prediction: the head's output at position i - 1 scores token i (an AR model adapted to
    # diffusion keeps its next-token knowledge); the model shifts it back, so callers always get "logits at i
    # score token i", and a fixed token (BOS) must stand at position 0
    logits_shift: bool = False
    # clean-causal attention (Eso-LM's cacheable attention with the clean tokens in their own order): an unmasked
    # token attends to the unmasked tokens at or before it, a masked one to every unmasked token and to itself.
    # An AR model adapted this way keeps its causal view of the text it has, so a short adaptation keeps its
    # English (docs/REAL_MODELS.md); the pattern follows the input, so it needs the mask token's id
    clean_causal: bool = False
    mask_id: int = ranged(-1, ">= -1", "-1 = none; set from the tokenizer at training time")


@dataclass
class TrainConfig:
    objective: str = "mdlm"  # see dlm.objectives.OBJECTIVES; its options: RunConfig.objective
    schedule: str = "loglinear"  # alpha(t), see dlm.noise.SCHEDULES (diffusion objectives only)
    max_steps: int = ranged(1000, "> 0", flag="--max-steps")
    batch_size: int = ranged(16, "> 0", flag="--batch-size")  # sequences per device per micro-step
    grad_accum: int = ranged(1, "> 0")
    lr: float = ranged(6e-4, "> 0", flag="--lr")
    lr_schedule: str = "cosine"  # "cosine" (after linear warmup, down to min_lr_ratio * lr) or "constant"
    warmup_steps: int = ranged(50, ">= 0", "0 = no warm-up")
    min_lr_ratio: float = ranged(0.1, "[0, 1]")
    weight_decay: float = ranged(0.01, ">= 0")
    beta1: float = ranged(0.9, "[0, 1)")
    beta2: float = ranged(0.95, "[0, 1)")
    grad_clip: float = ranged(1.0, ">= 0", "0 = no clipping")
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto" (dlm/train/precision.py: bf16 where faster)
    compile: bool = False
    ema: float = ranged(
        0.0, "[0, 1)", "0 = off"
    )  # EMA decay of the weights; eval and sampling then use the EMA weights
    seed: int = 0
    antithetic: bool = True  # antithetic (stratified) sampling of t across the batch
    log_every: int = ranged(10, "> 0")
    eval_every: int = ranged(0, ">= 0", "0 = only at the end", "--eval-every")  # validation every N steps
    eval_sequences: int = ranged(64, "> 0")  # validation sequences per periodic evaluation
    save_every: int = ranged(0, ">= 0", "0 = only at the end", "--save-every")  # checkpoint every N steps
    # stop (and checkpoint) after this much training time in this invocation (DDP: at a log step); --resume continues
    time_limit_minutes: float = ranged(0.0, ">= 0", "0 = no limit", "--time-limit")
    init: str | None = None  # start from this model (dlm.load's paths): adaptation, see dlm.train.adapt
    # anneal the attention from causal to full over the first K steps (DiffuLLaMA)
    anneal_steps: int = ranged(0, ">= 0", "0 = off", "--anneal-steps")
    log: str = ""  # trackers beside metrics.jsonl: "tensorboard", "wandb" or both, comma-separated (dlm.train.tracking)
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: "stop" the run (nothing bad is saved) or "skip" the step
    #                          (counted in metrics.jsonl as skipped_steps; one host sync per step), dlm.train.guard
    lora_rank: int = 0  # > 0: train low-rank adapters of this rank on the attention and MLP projections only
    #                     (dlm.train.lora; merged into model.safetensors); needs train.init (--init / dlm sft)
    lora_alpha: float = 0.0  # the adapters' scale is lora_alpha / lora_rank (0: lora_rank, a scale of 1)
    parallel: str = "ddp"  # under torchrun: "ddp" (a replica per process) or "fsdp" (FSDP2: weights, gradients and
    #                        optimiser state sharded over the processes, sharded checkpoints), dlm.train.fsdp
    activation_checkpointing: bool = False  # recompute each block's activations in the backward: less memory


@dataclass
class SFTConfig:
    """Supervised fine-tuning (``dlm sft``, ``dlm.train.sft``); unused by ``dlm train``."""

    data: str = ""  # the JSONL file of records {"messages": [...]} or {"prompt": ..., "response": ...}
    template: str = "chat"  # "chat": the tokenizer's chat template (dlm.data.chat); "raw": prompt + response as is
    cond_dropout: float = 0.0  # probability of dropping a row's prompt (all masks): an unconditional model for CFG
    max_len: int = 0  # tokens per example at most, longer ones are left out (0: the model's context)
    pad_to: int = 64  # EOS-pad every response to this many tokens (mdlm; within max_len): the canvas of an answer


PARALLEL = ("ddp", "fsdp")  # train.parallel
FORMAT_VERSION = 2  # of config.json; 1 (no format_version): the objective's options were fields of train
_V1_OPTIONS = ("graph", "block_size", "clip_beta", "clip_omega", "alpha0", "variant")  # train.* in format 1


def _objective_class(name: str):
    from dlm.objectives import OBJECTIVES  # objectives never import the config: no cycle at call time

    return OBJECTIVES.get(name)


def _option_fields(name: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(_objective_class(name).Config)}


def _not_an_option(key: str, name: str) -> DlmError:
    valid = ", ".join(_option_fields(name)) or "none"
    return DlmError(f"objective.{key} is not an option of the {name} objective; its options: {valid}")


@dataclass
class RunConfig:
    preset: str = "small"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: dict[str, Any] = field(default_factory=dict)  # options of train.objective (module docstring)
    sft: SFTConfig = field(default_factory=SFTConfig)  # dlm sft's settings

    def objective_config(self):
        """The options of ``train.objective`` as its ``Config`` dataclass (defaults for those not given);
        one-line errors for an option it does not take, a value of the wrong type or out of range."""
        config_cls = _objective_class(self.train.objective).Config
        fields, hints = _option_fields(self.train.objective), get_type_hints(config_cls)
        options = {}
        for key, value in self.objective.items():
            if key not in fields:
                raise _not_an_option(key, self.train.objective)
            expected = hints[key]
            if not (
                expected is bool
                if isinstance(value, bool)
                else isinstance(value, (int, float) if expected is float else expected)
            ):
                raise DlmError(f"objective.{key} must be of type {expected.__name__}, got {value!r}")
            options[key] = float(value) if expected is float else value
        return config_cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """Every field, the objective's options included (defaults filled in), and ``format_version``."""
        d = dataclasses.asdict(self)
        try:
            d["objective"] = {k: f.default for k, f in _option_fields(self.train.objective).items()} | d["objective"]
        except DlmError:  # an unknown objective name: kept as given, validate() names the valid ones
            pass
        return {"format_version": FORMAT_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """The config of a ``to_dict`` mapping (config.json); a format-1 mapping is migrated first."""
        if not isinstance(d, dict):
            raise DlmError(f"a run config must be a mapping, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("format_version", 1)
        if version == 1:
            d = _migrate_v1(d)
        elif version != FORMAT_VERSION:
            raise DlmError(f"config.json has format_version {version!r}; this dlm reads 1 and {FORMAT_VERSION}")
        if not isinstance(d.get("objective", {}), dict):
            raise DlmError(f"config section 'objective' must be a mapping, got {type(d['objective']).__name__}")
        if isinstance(d.get("train"), dict) and "objective" not in d["train"]:
            raise DlmError(
                "the config has no train.objective (what the model was trained for decides how it is read and "
                'sampled); add it, e.g. "train": {"objective": "mdlm", ...}'
            )
        cfg = _build(cls, d, "")
        cfg.objective_config()  # strict: options the objective takes, of their types, in range
        return cfg

    def validate(self) -> "RunConfig":
        """Reject values that cannot train, with a one-line DlmError naming the field: every field's type and
        declared range (``check_fields``), then what depends on several fields."""
        if not isinstance(self.preset, str):
            raise DlmError(f"preset must be a string, got {self.preset!r}")
        for name in ("data", "model", "train"):
            check_fields(getattr(self, name), f"{name}.")
        m = self.model
        check_architecture(m)
        if self.train.objective == "ar" and m.time_conditioning:
            raise DlmError("the ar objective has no time: drop model.time_conditioning")
        self.objective_config()  # the objective's options, validated by its Config
        if m.clean_causal and self.train.objective != "mdlm":
            raise DlmError(
                f"model.clean_causal is an attention for the mdlm objective (it reads the mask tokens), not "
                f"{self.train.objective}"
            )
        if self.train.anneal_steps and self.train.objective == "ar":
            raise DlmError("train.anneal_steps anneals causal attention to full: it applies to diffusion objectives")
        from dlm.train.tracking import parse_trackers

        parse_trackers(self.train.log)  # an unknown tracker lists the valid ones
        if self.train.nonfinite not in ("stop", "skip"):
            raise DlmError(f"unknown train.nonfinite {self.train.nonfinite!r}; choose one of: stop, skip")
        if self.train.lora_rank < 0 or self.train.lora_alpha < 0:
            raise DlmError("train.lora_rank and train.lora_alpha must be >= 0 (lora_rank 0: no adapters)")
        if self.train.lora_rank and self.train.ema > 0:
            raise DlmError("train.ema does not apply with train.lora_rank (only the adapters train); drop one")
        if self.train.lora_rank and not self.train.init:
            raise DlmError("train.lora_rank adapts a pretrained model: give the model to adapt with --init")
        if not 0.0 <= self.sft.cond_dropout <= 1.0:
            raise DlmError(f"sft.cond_dropout must be in [0, 1], got {self.sft.cond_dropout}")
        if self.sft.template not in ("chat", "raw"):
            raise DlmError(f"unknown sft.template {self.sft.template!r}; choose one of: chat, raw")
        if self.sft.max_len < 0 or self.sft.pad_to < 0:
            raise DlmError("sft.max_len and sft.pad_to must be >= 0 (max_len 0: the model's context)")
        if self.train.parallel not in PARALLEL:
            raise DlmError(f"unknown train.parallel {self.train.parallel!r}; choose one of: {', '.join(PARALLEL)}")
        if self.train.parallel == "fsdp" and self.train.objective == "diffusion-lm":
            raise DlmError(
                "train.parallel=fsdp does not run the diffusion-lm objective (it calls the model's embedding and head "
                "outside forward, where FSDP has not gathered them); use train.parallel=ddp"
            )
        if self.train.parallel == "fsdp" and self.train.lora_rank:
            raise DlmError("train.parallel=fsdp does not shard LoRA adapters (train.lora_rank); use train.parallel=ddp")
        return self


def _migrate_v1(d: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: train.graph/block_size/clip_beta/clip_omega/alpha0/variant move to the objective section,
    those the objective takes; the others (defaults: format 1 rejected non-defaults for other objectives) go."""
    if "objective" in d:
        raise DlmError('config.json has an objective section but no format_version; add "format_version": 2')
    train = dict(d.get("train", {})) if isinstance(d.get("train"), dict) else d.get("train")
    if not isinstance(train, dict):
        return d
    options = {key: train.pop(key) for key in _V1_OPTIONS if key in train}
    try:
        takes = _option_fields(train.get("objective", TrainConfig.objective))
    except DlmError:
        takes = {}
    return {**d, "train": train, "objective": {k: v for k, v in options.items() if k in takes}}


ARCHITECTURES = ("dlm", "llama")


def check_architecture(m: ModelConfig) -> None:
    """One-line errors for a model shape that cannot be built (heads, head width, the Llama-family fields)."""
    if m.arch not in ARCHITECTURES:
        raise DlmError(f"unknown model.arch {m.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    llama_only = {
        "n_kv_heads": m.n_kv_heads != 0,
        "head_dim": m.head_dim != 0,
        "qkv_bias": m.qkv_bias,
        "norm_eps": m.norm_eps != 0.0,
        "rope_scaling": m.rope_scaling != "none",
    }
    if m.arch == "dlm":
        given = [name for name, set_ in llama_only.items() if set_]
        if given:
            raise DlmError(f"model.{given[0]} applies to model.arch=llama only (the dlm layout has fused heads)")
        if m.d_model % m.n_heads or (m.d_model // m.n_heads) % 2:
            raise DlmError(f"model.d_model {m.d_model} must split into {m.n_heads} heads of even size")
        return
    head_dim = m.head_dim or (m.d_model // m.n_heads if m.d_model % m.n_heads == 0 else 0)
    if head_dim <= 0 or head_dim % 2:
        raise DlmError(
            f"model.head_dim must be a positive even number (or 0 with d_model {m.d_model} divisible "
            f"by n_heads {m.n_heads} into heads of even size), got {m.head_dim}"
        )
    kv = m.n_kv_heads or m.n_heads
    if kv <= 0 or m.n_heads % kv:
        raise DlmError(f"model.n_kv_heads {m.n_kv_heads} must divide model.n_heads {m.n_heads} (0: as many)")
    if m.norm_eps < 0:
        raise DlmError(f"model.norm_eps must be >= 0 (0: torch's default), got {m.norm_eps}")
    if m.clean_causal and m.causal:
        raise DlmError("model.clean_causal is an attention for diffusion models: it does not apply to causal ones")
    if m.rope_scaling not in ("none", "llama3"):
        raise DlmError(f"unknown model.rope_scaling {m.rope_scaling!r}; choose one of: none, llama3")
    if m.rope_scaling == "llama3" and not (
        m.rope_factor > 0 and 0 < m.rope_low_freq_factor < m.rope_high_freq_factor and m.rope_original_max_len > 0
    ):
        raise DlmError(
            "llama3 rope scaling needs rope_factor > 0, 0 < rope_low_freq_factor < "
            "rope_high_freq_factor and rope_original_max_len > 0"
        )


_TYPE_NAMES = {int: "an int", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _is_a(value, kind) -> bool:
    """isinstance, except that a bool is no number and an int is a float."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def check_value(path: str, value, hint, interval: str = "", meaning: str = "", flag: str = "") -> None:
    """A one-line error unless ``value`` is of type ``hint`` (``int``, ``str | None``, ...) and in ``interval``."""
    name = f"{flag} ({path})" if flag else path
    kinds = get_args(hint) or (hint,)
    if not any(_is_a(value, kind) for kind in kinds):
        expected = " or ".join(_TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind))) for kind in kinds)
        raise DlmError(f"{name} must be {expected}, got {value!r}")
    if interval and not _in_interval(value, interval):
        where = interval if interval[0] in "<>" else f"in {interval}"
        raise DlmError(f"{name} must be {where}{f' ({meaning})' if meaning else ''}, got {value!r}")


def _in_interval(value, interval: str) -> bool:
    """``value`` in ``interval``: "> a", ">= a", or "[a, b]" with either end open ("(", ")"); NaN never is."""
    if interval.startswith(">="):
        return value >= float(interval[2:])
    if interval.startswith(">"):
        return value > float(interval[1:])
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    return above and (value <= high if interval[-1] == "]" else value < high)


def check_fields(section, prefix: str) -> None:
    """The type and declared range (``ranged``) of every field of a config dataclass."""
    hints = get_type_hints(type(section))
    for f in dataclasses.fields(section):
        meta = f.metadata
        value = getattr(section, f.name)
        check_value(
            prefix + f.name,
            value,
            hints[f.name],
            meta.get("interval", ""),
            meta.get("meaning", ""),
            meta.get("flag", ""),
        )


def _build(cls, d: dict[str, Any], prefix: str):
    if not isinstance(d, dict):
        raise DlmError(f"config section {prefix or 'root'!r} must be a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise DlmError(f"unknown config key {prefix + unknown[0]!r}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in d.items():
        sub = hints[name]
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value, f"{prefix}{name}.")
        else:
            if get_origin(sub) is not dict:  # the objective section: checked by objective_config
                check_value(prefix + name, value, sub)
            kwargs[name] = value
    return cls(**kwargs)


def _parse_value(text: str, current: Any) -> Any:
    """Parse a command-line value with the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if current is None:
        return None if text.lower() in ("none", "null") else text
    return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides, e.g. ``model.d_model=256`` or ``objective.alpha0=0.5`` (an option of
    the objective named by ``train.objective`` at that point); unknown keys are errors."""
    for item in overrides:
        if "=" not in item:
            raise DlmError(f"override {item!r} must look like section.key=value, e.g. model.d_model=256")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) != 2 or parts[0] not in ("data", "model", "train", "objective", "sft"):
            raise DlmError(f"override key {path!r} must be data.KEY, model.KEY, train.KEY, objective.KEY or sft.KEY")
        if parts[0] == "objective":
            fields = _option_fields(cfg.train.objective)
            if parts[1] not in fields:
                raise _not_an_option(parts[1], cfg.train.objective)
            current = cfg.objective.get(parts[1], fields[parts[1]].default)
            try:
                cfg.objective[parts[1]] = _parse_value(text, current)
            except ValueError:
                raise DlmError(f"bad value {text!r} for {path} (expected {type(current).__name__})") from None
            continue
        section = getattr(cfg, parts[0])
        valid = [f.name for f in dataclasses.fields(section)]
        if parts[1] not in valid:
            raise DlmError(f"unknown config key {path!r}; valid keys in {parts[0]}: {', '.join(valid)}")
        current = getattr(section, parts[1])
        try:
            setattr(section, parts[1], _parse_value(text, current))
        except ValueError:
            raise DlmError(f"bad value {text!r} for {path} (expected {type(current).__name__})") from None
    return cfg
