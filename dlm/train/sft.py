"""Supervised fine-tuning: a pretrained model (a dlm run, a Hugging Face folder, a .gguf) trained on prompt ->
response records, the loss on the response only (``dlm.objectives.sft``; data: ``dlm.data.sft``).

    dlm sft runs/smol-mdlm --data chat.jsonl --max-steps 300 --out runs/smol-sft
    dlm sft runs/smol-mdlm --data chat.jsonl --lora 8 --set sft.cond_dropout=0.1 --out runs/smol-sft-lora

The run keeps the source's objective (mdlm or ar; ``--objective mdlm`` on an AR source adapts it at the same time,
as ``dlm train --init`` does), its shape, tokenizer and logits shift. One step = ``grad_accum`` batches of
``batch_size`` examples, each batch from one length bucket; the noise generator is reseeded from (seed, step,
micro-batch) as in ``dlm.train.loop``. It runs in one process (``--device``), and writes ``OUT/checkpoint`` (with
``--lora``: merged, see ``dlm.train.lora``) and ``OUT/metrics.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from dlm.config import RunConfig
from dlm.data.sft import BucketLoader, encode_examples, read_records
from dlm.errors import DlmError
from dlm.objectives import OBJECTIVES
from dlm.objectives.sft import SFT_OBJECTIVES, sft_loss
from dlm.train import checkpoint as ckpt
from dlm.train.adapt import init_config, init_model
from dlm.train.loop import MetricsLog, autocast_for, resolve_precision, step_seed
from dlm.train.lora import ADAPTER_FILE, LoRA
from dlm.train.optim import build_optimizer, lr_at

SFT_LR = 1e-4  # the default peak learning rate of a fine-tune


def sft_config(source: str, data: str, objective: str | None = None) -> RunConfig:
    """The run config of fine-tuning ``source`` on ``data``: the source's objective (or ``objective``), schedule,
    objective options and model shape; ``train.init`` = source, a fine-tune's learning rate."""
    from dlm.loader import load_config

    src = load_config(source)
    cfg = RunConfig()
    cfg.train.objective = objective or src.train.objective
    if cfg.train.objective not in SFT_OBJECTIVES:
        raise DlmError(
            f"dlm sft trains {' and '.join(SFT_OBJECTIVES)} models; {source} is {cfg.train.objective} "
            "(pass --objective mdlm to adapt it while fine-tuning)"
        )
    if cfg.train.objective == src.train.objective:
        cfg.train.schedule, cfg.objective = src.train.schedule, dict(src.objective)
    else:
        cfg.train.schedule = OBJECTIVES.get(cfg.train.objective).default_schedule
    init_config(cfg, source)
    cfg.preset = "sft"
    cfg.train.lr, cfg.train.warmup_steps, cfg.train.max_steps = SFT_LR, 20, 300
    cfg.sft.data = str(data)
    return cfg


def sft(cfg: RunConfig, out_dir: str | Path, *, overwrite: bool = False, progress: bool = True, device=None) -> dict:
    """Fine-tune ``cfg.train.init`` on ``cfg.sft.data`` into ``out_dir``; return the last logged metrics."""
    out_dir, tc = Path(out_dir), cfg.train
    cfg.validate()
    if tc.objective not in SFT_OBJECTIVES:
        raise DlmError(f"dlm sft trains {' and '.join(SFT_OBJECTIVES)} models, not {tc.objective}")
    if not tc.init:
        raise DlmError("dlm sft fine-tunes a model: set train.init (dlm sft RUN_OR_HF ...)")
    if ckpt.existing_checkpoint(out_dir) and not overwrite:
        raise DlmError(f"{out_dir} already holds a checkpoint; pass --overwrite to replace it, or choose another --out")
    if tc.ema > 0 and tc.lora_rank:
        raise DlmError("train.ema does not apply with --lora (the adapters are the only trained weights)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(tc.precision, device)
    autocast = autocast_for(precision, device)
    torch.manual_seed(tc.seed)

    # 1. the source model and tokenizer (a mask token added for a diffusion objective)
    model, tokenizer = init_model(cfg, device)
    objective = OBJECTIVES.build(cfg, tokenizer)
    if cfg.sft.cond_dropout > 0 and objective.name != "mdlm":
        raise DlmError("sft.cond_dropout trains the unconditional model of CFG: it applies to mdlm, not ar")
    # 2. the records as token pairs, in length buckets
    start = [tokenizer.bos_id] if cfg.model.logits_shift else []  # a shifted model's start token leads every row
    max_len = cfg.sft.max_len or cfg.model.max_seq_len
    examples, dropped = encode_examples(
        read_records(cfg.sft.data), tokenizer, template=cfg.sft.template, start=start, max_len=max_len
    )
    pad_to = cfg.sft.pad_to if objective.name == "mdlm" else 0  # AR stops at its first EOS: no padding to learn
    loader = BucketLoader(examples, tc.batch_size, tc.seed, pad_to=pad_to, max_len=max_len)
    # 3. what trains: the adapters (--lora) or the whole model
    lora = LoRA(model, tc.lora_rank, tc.lora_alpha, seed=tc.seed) if tc.lora_rank else None
    trained = lora if lora is not None else model
    optimizer = build_optimizer(trained, tc)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out_dir / "metrics.jsonl", True, None)
    n_trained = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    tqdm.write(
        f"dlm sft: {tc.init} ({objective.name}), {len(examples)} examples"
        + (f" ({dropped} longer than {max_len} tokens left out)" if dropped else "")
        + f", {n_trained / 1e6:.2f}M trained parameters"
        + (f" (LoRA rank {tc.lora_rank})" if lora is not None else "")
        + f", {precision} on {device.type}"
    )

    generator = torch.Generator(device=device)
    step, tokens_seen, elapsed, record = 0, 0, 0.0, {}
    window_loss, window_tokens, window_steps, window_start = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(total=tc.max_steps, disable=not progress, dynamic_ncols=True, desc="sft", unit="step")
    model.train()
    while step < tc.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro in range(tc.grad_accum):
            batch = loader.next_batch(tokenizer.eos_id).to(device)  # 1. a length bucket of examples
            generator.manual_seed(step_seed(tc.seed, step, micro, 0))
            with autocast():  # 2-4. noise, model, the response's loss
                out = sft_loss(objective, model, batch, generator, cfg.sft.cond_dropout)
            (out.loss / tc.grad_accum).backward()
            step_loss += out.loss.detach() / tc.grad_accum
            window_tokens += batch.tokens.numel()
        params = [p for p in trained.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip > 0 else None
        optimizer.step()  # 5. optimiser step
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed += time.perf_counter() - t0
        window_loss, window_steps = window_loss + step_loss, window_steps + 1
        if step % tc.log_every == 0 or step == tc.max_steps:
            window_time = time.perf_counter() - window_start
            tokens_seen += window_tokens
            record = {
                "step": step,
                "loss": float(window_loss) / window_steps,
                "lr": lr,
                "tokens_per_sec": window_tokens / window_time,
                "tokens_seen": tokens_seen,
                "elapsed_seconds": round(elapsed, 3),
                **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                **{name: float(value) for name, value in out.metrics.items()},
            }
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.1e}")
            window_loss, window_tokens, window_steps, window_start = 0.0, 0, 0, time.perf_counter()
        bar.update(1)
        if tc.time_limit_minutes > 0 and elapsed > 60 * tc.time_limit_minutes:
            bar.write(f"time limit of {tc.time_limit_minutes} minutes reached at step {step}")
            break
    bar.close()
    state = {"step": step, "tokens_seen": tokens_seen, "elapsed_seconds": elapsed, "data": loader.state_dict()}
    ckpt.save_checkpoint(
        out_dir,
        model=model if lora is None else lora.merged_model(),  # LoRA: the adapted weights, a plain checkpoint
        tokenizer=tokenizer,
        config=cfg,
        optimizer=optimizer,
        trainer_state=state,
        extra_tensors=None if lora is None else {ADAPTER_FILE: lora.adapter_tensors()},
    )
    tqdm.write(
        f"done: step {step}, loss {record.get('loss', float('nan')):.4f}; checkpoint in {out_dir / ckpt.CHECKPOINT}"
    )
    return record
