"""Tokenize a corpus once, cache the token stream on disk, and serve packed fixed-length sequences.

Documents are joined with ``<|endoftext|>`` into one stream per split, cached as a raw ``.bin`` memmap keyed by
the corpus and tokenizer hashes (so a second run does not re-tokenize), and cut into non-overlapping sequences of
``seq_len`` tokens (the remainder is dropped).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlm.config import DataConfig
from dlm.data.corpus import Corpus, load_corpus
from dlm.data.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_str, train_tokenizer
from dlm.errors import DlmError


def cache_dir() -> Path:
    """``$DLM_CACHE_DIR``, else ``~/.cache/dlm``."""
    return Path(os.environ.get("DLM_CACHE_DIR", Path.home() / ".cache" / "dlm"))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def corpus_tokenizer(corpus: Corpus, vocab_size: int) -> Tokenizer:
    """Train (or load from the cache) the BPE tokenizer of ``corpus``'s training split."""
    path = cache_dir() / "tokenizers" / f"{corpus.fingerprint()}-{vocab_size}.json"
    if path.exists():
        return tokenizer_from_str(path.read_text())
    tok = train_tokenizer(corpus.train, vocab_size)
    _atomic_write(path, tok.to_str().encode())
    return tok


def tokenize_split(docs: list[str], tokenizer: Tokenizer, key: str) -> np.ndarray:
    """The token stream of ``docs`` (each followed by EOS), cached on disk under ``key``."""
    special = f"{tokenizer.eos_id}:{tokenizer.mask_id}:{tokenizer.pad_id}" if tokenizer.is_foreign else ""
    tok_hash = hashlib.sha256((tokenizer.to_str() + special).encode()).hexdigest()[:16]
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    path = cache_dir() / "tokens" / f"{key}-{tok_hash}.bin"
    if path.exists():
        return np.memmap(path, dtype=dtype, mode="r")
    stream: list[int] = []
    for ids in tokenizer.encode_batch(docs):
        stream.extend(ids)
        stream.append(tokenizer.eos_id)
    arr = np.asarray(stream, dtype=dtype)
    reserved = [i for i in (tokenizer.mask_id, tokenizer.pad_id) if i is not None and i != tokenizer.eos_id]
    if np.isin(arr, reserved).any():
        names = " or ".join(tokenizer.token(i) for i in reserved)
        raise DlmError(f"the corpus contains the literal text {names}; remove it from the data")
    _atomic_write(path, arr.tobytes())
    return np.memmap(path, dtype=dtype, mode="r")


@dataclass
class PackedDataset:
    """Non-overlapping ``seq_len`` windows over a token stream."""

    tokens: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def batch(self, indices) -> torch.Tensor:
        """LongTensor [len(indices), seq_len]."""
        rows = [np.asarray(self.tokens[i * self.seq_len : (i + 1) * self.seq_len]) for i in indices]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


class SequenceLoader:
    """Shuffled batches of sequence indices, reproducible from (seed, epoch) and resumable from its state.

    Each epoch is a fresh permutation drawn from a generator seeded with ``seed + epoch``; the state is just
    ``(epoch, cursor)``, saved in checkpoints so that a resumed run reads exactly the batches it would have.
    """

    def __init__(self, dataset: PackedDataset, seed: int):
        if len(dataset) == 0:
            raise DlmError(f"the corpus is shorter than one sequence of {dataset.seq_len} tokens")
        self.dataset, self.seed = dataset, seed
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def next_batch(self, n: int) -> torch.Tensor:
        indices = []
        while len(indices) < n:
            if self.cursor == len(self._perm):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(n - len(indices), len(self._perm) - self.cursor)
            indices.extend(self._perm[self.cursor : self.cursor + take])
            self.cursor += take
        return self.dataset.batch(indices)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._perm = self._permutation(self.epoch)


def load_packed(cfg: DataConfig, tokenizer: Tokenizer | None = None):
    """Return ``(tokenizer, train, val)`` for a data config; trains or loads the tokenizer if not given."""
    corpus = load_corpus(cfg.name, text_column=cfg.text_column, val_fraction=cfg.val_fraction, encoding=cfg.encoding)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else corpus_tokenizer(corpus, cfg.vocab_size)
    key = corpus.fingerprint()
    train = PackedDataset(tokenize_split(corpus.train, tokenizer, f"{key}-train"), cfg.seq_len)
    val = PackedDataset(tokenize_split(corpus.val, tokenizer, f"{key}-val"), cfg.seq_len)
    if len(val) == 0:
        raise DlmError(
            f"the validation split has fewer than {cfg.seq_len} tokens; raise data.val_fraction or use more text"
        )
    return tokenizer, train, val
