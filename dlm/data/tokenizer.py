"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``) with the special tokens diffusion needs.

``<|endoftext|>`` separates documents (and is the AR model's start token), ``<|mask|>`` is the absorbing state of
masked diffusion, ``<|pad|>`` pads batches. Their ids are read from the tokenizer, never hard-coded. Any Hugging Face
``tokenizer.json`` can be used instead of a trained one; missing special tokens are added to it.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from dlm.errors import DlmError

EOS, MASK, PAD = "<|endoftext|>", "<|mask|>", "<|pad|>"
SPECIAL_TOKENS = [EOS, MASK, PAD]


class Tokenizer:
    """A thin wrapper around a ``tokenizers.Tokenizer`` exposing the special ids and plain encode/decode."""

    def __init__(self, hf: HFTokenizer):
        missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
        if missing:
            hf.add_special_tokens(missing)
        self.hf = hf
        self.eos_id: int = hf.token_to_id(EOS)
        self.mask_id: int = hf.token_to_id(MASK)
        self.pad_id: int = hf.token_to_id(PAD)

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (added-token ids of foreign tokenizers may leave gaps)."""
        return max(self.hf.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    def to_str(self) -> str:
        return self.hf.to_str()

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))


def train_tokenizer(texts: list[str], vocab_size: int = 8192) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (deterministic for the same texts and size)."""
    if vocab_size < 300:
        raise DlmError(f"vocab_size {vocab_size} is too small for byte-level BPE; use at least 300")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` (ours or any Hugging Face one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise DlmError(f"tokenizer file {path} not found; pass a path to a tokenizer.json")
    try:
        return Tokenizer(HFTokenizer.from_file(str(path)))
    except Exception as e:  # tokenizers raises a plain Exception on malformed files
        raise DlmError(f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0]})") from None


def tokenizer_from_str(text: str) -> Tokenizer:
    return Tokenizer(HFTokenizer.from_str(text))
