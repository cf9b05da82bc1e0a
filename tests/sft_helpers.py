"""A word-level world for the SFT and chat tests: a tokenizer over the words of generated facts, a random tiny
base run to fine-tune, and the fine-tuned run (made once per module)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from dlm.data.chat import split_turn
from dlm.data.sft_tasks import generate, people
from dlm.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from dlm.models.transformer import Transformer
from dlm.presets import preset_config
from dlm.train.checkpoint import save_checkpoint

PEOPLE = 8  # facts of 8 people: "Who is the mentor of X?" -> "Y."
EXTRA = ["System:", "Be", "brief.", "hello", "there"]


def word_tokenizer(records) -> Tokenizer:
    """A WordLevel tokenizer (whitespace split) over the words of ``records`` under the default chat template."""
    blank = Tokenizer(HFTokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    words = set(EXTRA)
    for r in records:
        prompt, response = split_turn(
            blank, [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        )
        words |= set((prompt + response).split())
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + ["[UNK]"] + sorted(words))}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(hf)


def facts_world(root: Path, *, objective: str = "mdlm", logits_shift: bool = False, n: int = 400):
    """(base run dir, data file, tokenizer): a random tiny model of ``objective`` with the facts' tokenizer."""
    records = generate("facts", n, 0, n_people=PEOPLE)
    tok = word_tokenizer(records)
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.model.vocab_size, cfg.model.max_seq_len = objective, tok.vocab_size, 32
    cfg.model.causal, cfg.model.logits_shift = objective == "ar", logits_shift
    cfg.model.d_model, cfg.model.d_ff = 128, 256  # wider than the tiny preset: learns the facts in ~100 steps
    torch.manual_seed(0)
    base = root / f"base-{objective}{'-shift' if logits_shift else ''}"
    save_checkpoint(base, model=Transformer(cfg.model), tokenizer=tok, config=cfg)
    data = root / "facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return base, data, tok


def fine_tune(base: Path, data: Path, out: Path, *, steps: int = 150, **train):
    from dlm.train.sft import sft, sft_config

    cfg = sft_config(str(base), str(data))
    cfg.train.max_steps, cfg.train.lr, cfg.train.warmup_steps, cfg.train.batch_size = steps, 3e-3, 10, 16
    cfg.train.precision, cfg.sft.pad_to = "fp32", 8  # the canvas of the tests' answers (gen_length 8)
    for key, value in train.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return sft(cfg, out, overwrite=True, progress=False)


def accuracy(engine, **options) -> float:
    """Exact-match accuracy of the answers to every fact's question."""
    right = 0
    for person, mentor in people(PEOPLE, 0):
        reply = engine.chat([{"role": "user", "content": f"Who is the mentor of {person}?"}], gen_length=8, **options)
        right += reply.text.strip() == f"{mentor}."
    return right / PEOPLE
