"""Typed run configuration: one dataclass per component, composed into ``RunConfig``.

Every run saves its ``RunConfig`` as ``config.json`` beside the weights. Loading rejects unknown keys, and
``--set section.key=value`` overrides from the command line go through the same strict path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from dlm.errors import DlmError


@dataclass
class DataConfig:
    name: str = "austen"  # "austen" (bundled), a .txt file or folder, "hf:NAME[:CONFIG]", or a saved HF dataset
    text_column: str = "text"  # column read from a Hugging Face dataset
    val_fraction: float = 0.05  # held-out tail for corpora without their own validation split
    seq_len: int = 256  # tokens per packed training sequence
    tokenizer: str | None = None  # path to a tokenizer.json; None trains a byte-level BPE on the training split
    vocab_size: int = 8192  # size of the trained BPE vocabulary, special tokens included


@dataclass
class ModelConfig:
    vocab_size: int = 8192  # set from the tokenizer at training time
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    d_ff: int = 1536
    max_seq_len: int = 256  # the context the model is trained for; prompts + generation must fit
    causal: bool = False  # default attention: causal (AR) or bidirectional (diffusion)
    time_conditioning: bool = False  # adaLN conditioning on t
    tie_embeddings: bool = False
    embed_dim: int = 0  # > 0: token embeddings of this width, projected to and from d_model (Diffusion-LM)
    rope_base: float = 10000.0
    dropout: float = 0.0


@dataclass
class TrainConfig:
    objective: str = "mdlm"  # see dlm.objectives.OBJECTIVES
    schedule: str = "loglinear"  # alpha(t), see dlm.noise.SCHEDULES (diffusion objectives only)
    graph: str = "absorb"  # sedd only: absorb or uniform, see dlm.objectives.GRAPHS
    max_steps: int = 1000
    batch_size: int = 16  # sequences per device per micro-step
    grad_accum: int = 1
    lr: float = 6e-4
    lr_schedule: str = "cosine"  # "cosine" (after linear warmup, down to min_lr_ratio * lr) or "constant"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto" (bf16 on CUDA, fp32 on CPU)
    compile: bool = False
    ema: float = 0.0  # EMA decay of the weights (0 = off); eval and sampling then use the EMA weights
    seed: int = 0
    antithetic: bool = True  # antithetic (stratified) sampling of t across the batch
    log_every: int = 10
    eval_every: int = 0  # validation every N steps (0 = only at the end)
    eval_sequences: int = 64  # validation sequences per periodic evaluation
    save_every: int = 0  # checkpoint every N steps (0 = only at the end)
    time_limit_minutes: float = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    block_size: int = 16  # bd3lm: tokens per block (must divide data.seq_len)
    clip_beta: float = 0.3  # bd3lm: training draws each block's t from U[clip_beta, clip_omega] (eval: U[eps, 1])
    clip_omega: float = 0.8
    alpha0: float = 1.0  # esolm: expected fraction of tokens made by diffusion (1 = masked diffusion, 0 = AR)
    variant: str = "B"  # esolm: attention variant, A (clean tokens attend both ways) or B (causal, KV-cacheable)


@dataclass
class RunConfig:
    preset: str = "small"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return _build(cls, d, "")

    def validate(self) -> "RunConfig":
        """Reject values that cannot train, with a one-line DlmError naming the field."""
        positive = {
            "data.seq_len": self.data.seq_len, "model.d_model": self.model.d_model,
            "model.n_layers": self.model.n_layers, "model.n_heads": self.model.n_heads, "model.d_ff": self.model.d_ff,
            "train.max_steps": self.train.max_steps, "train.batch_size": self.train.batch_size,
            "train.grad_accum": self.train.grad_accum, "train.log_every": self.train.log_every,
            "train.lr": self.train.lr,
        }
        for name, value in positive.items():
            if not value > 0:
                raise DlmError(f"{name} must be positive, got {value}")
        m = self.model
        if m.d_model % m.n_heads or (m.d_model // m.n_heads) % 2:
            raise DlmError(f"model.d_model {m.d_model} must split into {m.n_heads} heads of even size")
        if m.embed_dim < 0:
            raise DlmError(f"model.embed_dim must be 0 (embeddings of width d_model) or positive, got {m.embed_dim}")
        if not 0.0 <= self.train.ema < 1.0:
            raise DlmError(f"train.ema must be in [0, 1) (0 = off), got {self.train.ema}")
        if self.train.objective == "ar" and m.time_conditioning:
            raise DlmError("the ar objective has no time: drop model.time_conditioning")
        if self.train.graph != "absorb" and self.train.objective != "sedd":
            raise DlmError(f"--graph {self.train.graph} applies to --objective sedd only (got {self.train.objective})")
        if (self.train.alpha0 != 1.0 or self.train.variant != "B") and self.train.objective != "esolm":
            raise DlmError(f"--alpha0 and --variant apply to --objective esolm only (got {self.train.objective})")
        if not 0.0 < self.data.val_fraction < 1.0:
            raise DlmError(f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        return self


def _build(cls, d: dict[str, Any], prefix: str):
    if not isinstance(d, dict):
        raise DlmError(f"config section {prefix or 'root'!r} must be a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise DlmError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in d.items():
        sub = hints[name]
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value, f"{prefix}{name}.")
        else:
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
    """Apply ``section.key=value`` overrides, e.g. ``model.d_model=256``; unknown keys are errors."""
    for item in overrides:
        if "=" not in item:
            raise DlmError(f"override {item!r} must look like section.key=value, e.g. model.d_model=256")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) != 2 or parts[0] not in ("data", "model", "train"):
            raise DlmError(f"override key {path!r} must be data.KEY, model.KEY or train.KEY")
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
