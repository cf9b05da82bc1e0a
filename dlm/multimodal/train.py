"""The joint objective and the training loop of the X-Fusion miniature.

    loss = image_weight * E_t || v_hat(x_t, t | caption) - (eps - x0) ||^2  +  text_weight * CE(caption | image)

(DESIGN section 5: 0.2 next-token CE, 1.0 flow-matching MSE). Each step draws ``t2i_batch`` training images for
text-to-image (a caption per image in a random template, replaced by the empty caption with probability
``caption_dropout``, which trains the unconditional model of classifier-free guidance) and ``i2t_batch`` others
for image-to-text (the latents noised to ``cond_noise``, 0 = clean; their caption scored by next-token CE);
``i2t_batch = 0`` trains text-to-image alone. The diffusion loss is ``dlm.objectives.gaussian.gaussian_loss`` on
the schedule and target of the config (rectified flow and its velocity by default), so sampling converts the
prediction with the Gaussian module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.multimodal.data import CaptionCodec, Digits
from dlm.multimodal.model import VARIANTS, XFusion
from dlm.noise.gaussian import GAUSSIAN_SCHEDULES, TARGETS, add_noise
from dlm.objectives.gaussian import gaussian_loss


@dataclass(frozen=True)
class MultimodalConfig:
    variant: str = "dual-tower"
    steps: int = 300
    t2i_batch: int = 32  # text-to-image examples per step
    i2t_batch: int = 16  # image-to-text examples per step (0: no understanding data)
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    image_weight: float = 1.0
    text_weight: float = 0.2
    caption_dropout: float = 0.1  # probability of the empty caption in text-to-image (CFG)
    cond_noise: float = 0.0  # noise level t of the image in image-to-text examples
    schedule: str = "rectified-flow"
    target: str = "flow"
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise DlmError(f"unknown multimodal variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        GAUSSIAN_SCHEDULES.get(self.schedule), TARGETS.get(self.target)
        if self.steps < 1 or self.t2i_batch < 1 or self.i2t_batch < 0:
            raise DlmError(
                f"need steps >= 1, t2i_batch >= 1 and i2t_batch >= 0, got {self.steps}, {self.t2i_batch}, "
                f"{self.i2t_batch}"
            )
        if not 0.0 <= self.caption_dropout < 1.0 or not 0.0 <= self.cond_noise < 1.0:
            raise DlmError(
                f"caption_dropout and cond_noise must be in [0, 1), got {self.caption_dropout}, {self.cond_noise}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def caption_ce(model: XFusion, latents, t, text_ids, text_valid) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of the caption tokens after BOS, EOS included, given the image."""
    logits = model.caption_logits(latents, t, text_ids, text_valid)[:, :-1].float()  # (B, T - 1, V)
    targets, keep = text_ids[:, 1:], text_valid[:, 1:]  # (B, T - 1)
    return F.cross_entropy(logits[keep], targets[keep])


def joint_loss(
    model: XFusion,
    cfg: MultimodalConfig,
    codec: CaptionCodec,
    data: Digits,
    latents: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict]:
    """One step's loss from ``data`` (a split) and its latent tokens [N, n_image, P]: (loss, float metrics)."""
    # 1. text-to-image: captions (some dropped), the diffusion loss on their images' latents
    idx = torch.randint(len(data), (cfg.t2i_batch,), generator=generator)  # (B1,)
    texts = codec.random_captions(data.labels[idx], data.thickness[idx], generator)
    drop = torch.rand(len(texts), generator=generator) < cfg.caption_dropout
    ids, valid = codec.encode(["" if d else c for c, d in zip(texts, drop.tolist())])  # (B1, T)
    out = gaussian_loss(
        lambda x_t, t: model.denoise(x_t, t, ids, valid),
        latents[idx],
        schedule=cfg.schedule,
        target=cfg.target,
        generator=generator,
    )
    loss, metrics = cfg.image_weight * out.loss, {"image_loss": out.loss.item()}
    # 2. image-to-text: other images, their captions scored given the (lightly noised) image
    if cfg.i2t_batch:
        idx = torch.randint(len(data), (cfg.i2t_batch,), generator=generator)  # (B2,)
        ids, valid = codec.encode(codec.random_captions(data.labels[idx], data.thickness[idx], generator))
        t = torch.full((cfg.i2t_batch,), cfg.cond_noise)
        x = add_noise(latents[idx], t, cfg.schedule, generator)[0] if cfg.cond_noise > 0 else latents[idx]
        ce = caption_ce(model, x, t, ids, valid)
        loss = loss + cfg.text_weight * ce
        metrics["text_loss"] = ce.item()
    return loss, metrics


def lr_at(step: int, cfg: MultimodalConfig) -> float:
    """Linear warmup, then cosine decay to 10% of ``lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_multimodal(
    model: XFusion, cfg: MultimodalConfig, codec: CaptionCodec, data: Digits, latents: torch.Tensor, log_every=25
) -> list[dict]:
    """Train the model's trainable parameters (AdamW) for ``cfg.steps``; returns the logged metrics (mean over
    each window of ``log_every`` steps)."""
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    history, window = [], []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss, metrics = joint_loss(model, cfg, codec, data, latents, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        window.append(metrics)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, **{k: sum(m[k] for m in window) / len(window) for k in window[0]}})
            window = []
    model.eval()
    return history
