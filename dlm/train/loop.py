"""The training loop: data -> noise process -> model -> objective -> optimiser.

    dlm train --preset small --objective mdlm --max-steps 2000 --out runs/mdlm
    torchrun --nproc_per_node=2 -m dlm.cli train --preset tiny --objective ar --max-steps 40 --out runs/ddp
    torchrun --nproc_per_node=2 -m dlm.cli train --preset small --set train.parallel=fsdp --out runs/fsdp

One step = ``grad_accum`` micro-batches of ``batch_size`` sequences per process. The noise generator is reseeded
from (seed, step, micro-batch, rank) at every micro-batch and the data order is a function of (seed, epoch), so a
run resumed from a checkpoint reproduces the uninterrupted run bit for bit (on the same machine and settings).

A step never waits for the device: the losses, metrics and grad norm stay tensors until a log step
(``train.log_every``) turns them into floats, and under DDP the ranks agree on the time limit only there (one
all-reduce per log step), so a run that hits ``--time-limit`` stops at the next log step, on every rank together.
A NaN or infinite loss or gradient is caught there too, and before every save (``dlm.train.guard``).

A run holds the run lock on ``--out`` (``dlm.train.runlock``) from start to end; ``--resume`` first makes the newest
complete checkpoint ``checkpoint/`` (``dlm.train.checkpoint.recover``) and refuses when there is none, unless
``--overwrite`` says to start a new run then.

Under torchrun the model is replicated (DDP, ``train.parallel=ddp``) or sharded (FSDP2, ``fsdp``: dlm.train.fsdp,
which writes sharded checkpoints while training and whole ones at the end). How a run is spread over processes and
whether it checkpoints activations (``train.activation_checkpointing``) is the invocation's choice, also on
``--resume``: either form of checkpoint resumes under either.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dlm.config import RunConfig
from dlm.data.packing import SequenceLoader, load_packed
from dlm.data.tokenizer import load_tokenizer
from dlm.errors import DlmError
from dlm.eval.likelihood import evaluate
from dlm.models.transformer import Transformer
from dlm.objectives import OBJECTIVES
from dlm.train import checkpoint as ckpt
from dlm.train import sharded
from dlm.train.activation_checkpointing import checkpoint_activations
from dlm.train.adapt import AnnealedAttention, anneal_ratio, init_model, set_mask_id
from dlm.train.distributed import DistInfo, all_reduce_max, barrier, setup_distributed, teardown
from dlm.train.guard import NonFiniteGuard
from dlm.train.lora import ADAPTER_FILE, LoRA, load_adapter
from dlm.train.optim import build_optimizer, lr_at
from dlm.train.precision import resolve_precision
from dlm.train.runlock import RunLock
from dlm.train.tracking import open_trackers, parse_trackers


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{step}:{micro}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut short by a crash counts as after every checkpoint."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return float("inf")


class MetricsLog:
    """``OUT/metrics.jsonl``: one JSON object per logged step (rank 0 only), and the same records to the trackers
    (``--log``, dlm.train.tracking)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None, trackers: list | None = None):
        self.path, self.enabled, self.trackers = path, enabled, trackers or []
        if enabled and resume_step is not None and path.exists():  # drop lines logged after the checkpoint
            kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif enabled:
            path.write_text("")

    def write(self, record: dict) -> None:
        """Append ``record``; a NaN or infinite value is written as null (JSON has no such numbers)."""
        if self.enabled:
            record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
            with self.path.open("a") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")
            for tracker in self.trackers:
                tracker.write(record)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    device: str | None = None,
) -> dict:
    """Train per ``cfg`` into ``out_dir``; return the last logged metrics. ``stop_at`` ends the run early at that
    step (with a checkpoint), as an interruption would, without changing the LR schedule."""
    out_dir = Path(out_dir)
    cfg.validate()
    if cfg.train.parallel == "fsdp" and "LOCAL_RANK" not in os.environ and not torch.distributed.is_initialized():
        raise DlmError(
            "train.parallel=fsdp shards the model over the processes of torchrun: launch with torchrun "
            "--nproc_per_node=N -m dlm.cli train ... (one process: drop it)"
        )
    with RunLock(out_dir) if int(os.environ.get("RANK", "0")) == 0 else nullcontext():  # rank 0 writes OUT
        if ckpt.existing_checkpoint(out_dir) and not (resume or overwrite):
            raise DlmError(
                f"{out_dir} already holds a checkpoint; pass --resume to continue it, --overwrite to start "
                "again, or choose another --out"
            )
        info = setup_distributed(device, group=cfg.train.parallel == "fsdp")
        try:
            saved = _resumable(out_dir, info, overwrite) if resume else None
            return _train(cfg, out_dir, info, saved=saved, progress=progress, stop_at=stop_at)
        finally:
            teardown(info)


def _resumable(out_dir: Path, info: DistInfo, overwrite: bool) -> Path | None:
    """--resume: the newest complete checkpoint, made ``checkpoint/`` (rank 0; dead runs' leftovers deleted), or
    None with --overwrite; without it, a one-line error when nothing is complete."""
    if info.is_main:
        ckpt.recover(out_dir)
    barrier(info)
    saved = ckpt.newest_complete(out_dir)
    if saved is None and not overwrite:
        raise DlmError(
            f"--resume: {out_dir} holds no complete checkpoint to resume; drop --resume to start a new run there, "
            "or add --overwrite to start one whenever there is nothing to resume"
        )
    if saved is None and info.is_main:
        tqdm.write(f"--resume --overwrite: no complete checkpoint in {out_dir}, starting a new run")
    return saved


def _train(cfg: RunConfig, out_dir: Path, info: DistInfo, *, saved: Path | None, progress: bool, stop_at) -> dict:
    tc = cfg.train
    if saved:  # the run continues with its own config, except how long it runs, how it is spread (docstring), --log
        invocation = ("max_steps", "time_limit_minutes", "parallel", "activation_checkpointing", "log")
        now = {k: getattr(tc, k) for k in invocation}
        cfg = ckpt.load_config(saved)
        for key, value in now.items():
            setattr(cfg.train, key, value)
        tc = cfg.train
    OBJECTIVES.get(tc.objective).configure(cfg)  # e.g. diffusion-lm: a Gaussian schedule, time conditioning, ...
    precision, why = resolve_precision(tc.precision, info.device, cfg.model.d_model, cfg.model.d_ff)
    if info.enabled and tc.precision == "auto":  # a timing probe may differ between ranks: bf16 only if all agree
        fp32 = all_reduce_max(torch.tensor(float(precision == "fp32"), device=info.device), info)
        if precision == "bf16" and fp32.item():
            precision, why = "fp32", why + "; another process chose fp32"
    autocast = autocast_for(precision, info.device)
    torch.manual_seed(tc.seed)

    # data: tokenizer (trained on the training split, or the checkpoint's), packed train / validation sequences
    tokenizer = load_tokenizer(saved / "tokenizer.json") if saved else None
    initial = None
    if tc.init and (not saved or tc.lora_rank):  # adaptation: the source's weights and tokenizer (a mask token
        initial, source_tokenizer = init_model(cfg, info.device)  # added if needed); LoRA resumes on that base
        tokenizer = tokenizer or source_tokenizer
    tokenizer, train_set, val_set = load_packed(cfg.data, tokenizer)
    if not tc.init:
        cfg.model.vocab_size = tokenizer.vocab_size
    set_mask_id(cfg.model, tokenizer)
    objective = OBJECTIVES.build(cfg, tokenizer)  # its options from cfg.objective, the special ids from tokenizer
    cfg.model.causal = objective.causal
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len + cfg.model.logits_shift)  # + BOS
    loader = SequenceLoader(train_set, seed=tc.seed)

    # model, optional EMA, activation checkpointing, FSDP sharding, optimiser and compile / DDP wrappers
    fsdp = tc.parallel == "fsdp"
    model = Transformer(cfg.model).to(info.device) if initial is None else initial
    lora = LoRA(model, tc.lora_rank, tc.lora_alpha, seed=tc.seed) if tc.lora_rank else None  # freezes the model
    trained = model if lora is None else lora  # what the optimiser updates
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema > 0 else None
    # weights before sharding, unless FSDP reads its rows of a sharded checkpoint after
    load_rows = fsdp and saved is not None and sharded.is_sharded(saved)
    if saved and not load_rows:
        if lora is None:
            ckpt.load_weights(model, saved / "model.safetensors")
        else:  # model.safetensors is merged; the adapters go back on the frozen source
            lora.load_adapter_tensors(load_adapter(saved))
        if ema is not None:
            ckpt.load_weights(ema, saved / "ema.safetensors")
    if tc.activation_checkpointing:
        checkpoint_activations(model)
    if fsdp:
        from dlm.train import fsdp as fsdp_lib  # (torch.distributed.fsdp takes seconds to import)

        for m in (model, ema):
            if m is not None:
                fsdp_lib.shard_model(m, info, precision)
        if load_rows:
            fsdp_lib.load_weights(model, saved, "model")
            if ema is not None:
                fsdp_lib.load_weights(ema, saved, "ema")
    optimizer = build_optimizer(trained, tc)
    step, tokens_seen, elapsed, skipped = 0, 0, 0.0, 0
    if saved:
        state = ckpt.load_trainer_state(saved)
        load_optimizer = fsdp_lib.load_optimizer if fsdp else ckpt.load_optimizer
        load_optimizer(optimizer, saved, state["optimizer_param_groups"])
        loader.load_state_dict(state["data"])
        torch.set_rng_state(ckpt.rng_from_str(state["torch_rng"]))
        if "cuda_rng" in state and info.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.rng_from_str(state["cuda_rng"]), info.device)
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed_seconds"]
        skipped = state.get("skipped_steps", 0)
    forward = torch.compile(model) if tc.compile else model
    ddp = info.enabled and not fsdp
    if ddp:
        forward = DistributedDataParallel(forward, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    if info.is_main and not saved:  # a new run: drop an old run's weights (--overwrite) and dead runs' leftovers
        ckpt.clear(out_dir)
    trackers = open_trackers(parse_trackers(tc.log), out_dir, cfg, step if saved else None) if info.is_main else []
    log = MetricsLog(out_dir / "metrics.jsonl", info.is_main, step if saved else None, trackers)
    if info.is_main:
        n_params = model.num_parameters()
        tqdm.write(
            f"dlm train: {'from ' + tc.init if tc.init else cfg.preset} {tc.objective}, {n_params / 1e6:.2f}M "
            f"parameters, {precision}{f' (auto: {why})' if tc.precision == 'auto' else ''}, "
            f"{info.world_size} process(es) on {info.device.type}, {len(train_set)} training sequences of "
            f"{cfg.data.seq_len} tokens" + (f", resuming at step {step}" if saved else "")
        )

    guard = NonFiniteGuard(tc.nonfinite, info, skipped)
    last_saved = {"step": step if saved else None}

    def kept() -> str:  # what the error of a guard says is on disk
        done = last_saved["step"]
        return f"{out_dir / ckpt.CHECKPOINT} holds step {done}" if done is not None else "no checkpoint was saved"

    def save() -> None:
        if fsdp:
            fsdp_lib.reshard(model, ema)  # (an evaluation leaves the root's weights gathered)
        guard.check(kept())
        guard.check_weights(kept(), model, ema)
        trainer_state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "elapsed_seconds": elapsed,
            "skipped_steps": guard.skipped,
            "data": loader.state_dict(),
            "torch_rng": ckpt.rng_to_str(torch.get_rng_state()),
            **(
                {"cuda_rng": ckpt.rng_to_str(torch.cuda.get_rng_state(info.device).cpu())}
                if info.device.type == "cuda"
                else {}
            ),
        }
        parts = dict(tokenizer=tokenizer, config=cfg, optimizer=optimizer, trainer_state=trainer_state)
        if fsdp:  # every process: its shard while training, the whole tensors gathered at the end
            fsdp_lib.save(out_dir, info, model=model, ema=ema, **parts, whole=step >= tc.max_steps)
        elif info.is_main:
            ckpt.save_checkpoint(
                out_dir,
                model=model if lora is None else lora.merged_model(),  # LoRA: the adapted weights, plain
                ema_model=ema,
                extra_tensors=None if lora is None else {ADAPTER_FILE: lora.adapter_tensors()},
                **parts,
            )
        last_saved["step"] = step
        barrier(info)

    def validate() -> float:
        """Validation bound / NLL on the first eval_sequences sequences, logged to metrics.jsonl."""
        guard.check(kept())
        val = evaluate(
            ema if ema is not None else model,
            objective,
            val_set,
            tokenizer,
            num_samples=1,
            seed=tc.seed,
            max_sequences=tc.eval_sequences,
            batch_size=tc.batch_size,
            dist_info=info,
            autocast=autocast,
        )["nats_per_token"]
        if fsdp:
            fsdp_lib.reshard(model, ema)  # the next step's update and the EMA read the sharded weights
        log.write({"step": step, "val_nats_per_token": val})
        return val

    end = min(tc.max_steps, stop_at) if stop_at is not None else tc.max_steps
    elapsed_at_start = elapsed  # --time-limit counts this invocation's training time (resumable chunks)
    bar = tqdm(
        total=tc.max_steps,
        initial=step,
        disable=not (progress and info.is_main),
        dynamic_ncols=True,
        desc="train",
        unit="step",
    )
    generator, anneal_generator = torch.Generator(device=info.device), torch.Generator(device=info.device)
    tokens_per_step = tc.batch_size * tc.grad_accum * info.world_size * cfg.data.seq_len
    # the losses stay on the device until a log step: no host sync per step
    window_loss, window_steps, window_start = torch.zeros((), device=info.device), 0, time.perf_counter()
    window_taken = 0  # steps of the window whose update was applied (all but nonfinite=skip's skipped ones)
    record: dict = {}
    model.train()
    try:  # the bar ends its line before an error (guard, data, ...) is printed
        while step < end:
            t0 = time.perf_counter()
            lr, ratio = lr_at(step, tc), anneal_ratio(step, tc.anneal_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=info.device)
            for micro in range(tc.grad_accum):
                # 1. data: this process's share of the global micro-batch
                x0 = loader.next_batch(tc.batch_size * info.world_size)[info.rank :: info.world_size].to(info.device)
                # 2-4. noise process, model, objective (inside the objective)
                generator.manual_seed(step_seed(tc.seed, step, micro, info.rank))
                call = forward
                if ratio < 1.0:  # attention annealing: causal plus a growing share of later keys
                    anneal_generator.manual_seed(step_seed(tc.seed + 1, step, micro, info.rank))
                    call = AnnealedAttention(forward, ratio, anneal_generator)
                last = micro == tc.grad_accum - 1  # gradients are reduced over the processes after the last only
                if fsdp:
                    model.set_requires_gradient_sync(last)
                sync = nullcontext() if (not ddp or last) else forward.no_sync()
                with sync:
                    with autocast():
                        out = objective.loss(call, x0, generator)
                    (out.loss / tc.grad_accum).backward()
                step_loss += out.loss.detach() / tc.grad_accum
            # 5. optimiser step, unless the loss or the gradients are not finite (guard: recorded on the device)
            max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf  # (inf: the norm only, the gradients as they are)
            grad_norm = torch.nn.utils.clip_grad_norm_(trained.parameters(), max_norm)
            if fsdp:
                grad_norm = fsdp_lib.local(grad_norm)  # (a replicated DTensor: every process has the whole norm)
            taken = guard.take_step(step + 1, step_loss, grad_norm)
            if taken:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None and taken:
                with torch.no_grad():
                    for p_ema, p in zip(ema.parameters(), model.parameters()):
                        p_ema.lerp_(p, 1.0 - tc.ema)
            step += 1
            tokens_seen += tokens_per_step
            elapsed += time.perf_counter() - t0
            window_steps += 1
            if taken:
                window_loss, window_taken = window_loss + step_loss, window_taken + 1

            logged = step % tc.log_every == 0 or step == end
            if logged:  # the one host sync of the window: the loss, the grad norm and the metrics become floats
                # .item() waits for the device, so the window's time is all in (nan: every step skipped)
                loss = window_loss.item() / window_taken if window_taken else math.nan
                window_time = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "tokens_per_sec": window_steps * tokens_per_step / window_time,
                    "tokens_seen": tokens_seen,
                    "elapsed_seconds": round(elapsed, 3),
                }
                if tc.grad_clip > 0:
                    record["grad_norm"] = float(grad_norm)
                if tc.nonfinite == "skip":
                    record["skipped_steps"] = guard.skipped
                if tc.anneal_steps:
                    record["attention_anneal"] = ratio
                record.update({name: float(value) for name, value in out.metrics.items()})
                log.write(record)
                guard.check(kept(), window_steps=window_steps, window_taken=window_taken)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_sec']:.0f}", lr=f"{lr:.1e}")
                window_loss, window_steps, window_start = torch.zeros_like(window_loss), 0, time.perf_counter()
                window_taken = 0
            bar.update(1)
            out_of_time = False
            if tc.time_limit_minutes > 0 and (logged or not info.enabled):
                out_of_time = elapsed - elapsed_at_start > 60 * tc.time_limit_minutes  # this invocation's time
                if info.enabled:  # every rank must stop at the same step: they agree at log steps, not every step
                    flag = torch.tensor(float(out_of_time), device=info.device)
                    out_of_time = bool(all_reduce_max(flag, info).item())
            if tc.eval_every and step % tc.eval_every == 0 and step < end and not out_of_time:
                val = validate()
                if info.is_main:
                    bound = " (bound)" if objective.is_bound else ""
                    bar.write(f"step {step}: validation {val:.4f} nats/token{bound}")
            if tc.save_every and step % tc.save_every == 0 and step < end:
                save()
            if out_of_time:
                if info.is_main:
                    bar.write(f"time limit of {tc.time_limit_minutes} minutes reached at step {step}")
                break
    finally:
        bar.close()
    val = validate()
    record = {**record, "step": step, "val_nats_per_token": val}
    save()
    log.close()
    if info.is_main:
        tqdm.write(
            f"done: step {step}, validation {'<= ' if objective.is_bound else ''}{val:.4f} nats/token; "
            f"checkpoint in {out_dir / ckpt.CHECKPOINT}"
        )
    return record
