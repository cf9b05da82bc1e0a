"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``) with the special tokens diffusion needs.

``<|endoftext|>`` separates documents (and is the AR model's start token), ``<|mask|>`` is the absorbing state of
masked diffusion, ``<|pad|>`` pads batches. Their ids are read from the tokenizer, never hard-coded. Any Hugging Face
``tokenizer.json`` can be used instead of a trained one; missing special tokens are added to it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from dlm.errors import DlmError, DlmTypeError

EOS, MASK, PAD = "<|endoftext|>", "<|mask|>", "<|pad|>"
SPECIAL_TOKENS = [EOS, MASK, PAD]
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text, what: str = "the text") -> str:
    """``text`` if it is a str of valid Unicode; a one-line error otherwise. A command-line argument that was not
    UTF-8 holds its undecodable bytes as lone surrogates (Python's surrogateescape), which no tokenizer encodes."""
    if not isinstance(text, str):
        raise DlmTypeError(f"{what} must be a str, got {type(text).__name__}")
    bad = _SURROGATE.search(text)
    if bad:
        code = ord(bad.group())
        byte = f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "a lone surrogate"
        raise DlmError(
            f"{what} is not valid UTF-8 text ({byte} at character {bad.start()}); pass UTF-8 (convert it with "
            "iconv -t utf-8, or use a UTF-8 locale)"
        )
    return text


class Tokenizer:
    """A thin wrapper around a ``tokenizers.Tokenizer`` exposing the special ids and plain encode/decode.

    ``Tokenizer(hf)`` is dlm's own: the special tokens missing from ``hf`` are added. ``Tokenizer.foreign(hf,
    ...)`` wraps a pretrained model's tokenizer as it is (its vocabulary never grows): the special ids are the
    ones its model declares, ``mask_id`` is None when it has no mask token, ``bos_id`` is the start token (the
    AR objective's first input; EOS when there is none), ``stop_ids`` every end-of-turn id (EOS and e.g.
    ``<|im_end|>``), and ``chat_template`` the Jinja template of its ``tokenizer_config.json`` (or None).
    """

    def __init__(self, hf: HFTokenizer):
        hf = with_special_tokens(hf, SPECIAL_TOKENS)
        self.hf = hf
        self.eos_id: int = hf.token_to_id(EOS)
        self.mask_id: int | None = hf.token_to_id(MASK)
        self.pad_id: int = hf.token_to_id(PAD)
        self.bos_id: int = self.eos_id
        self.stop_ids: tuple[int, ...] = (self.eos_id,)
        self.chat_template: str | None = None
        self.is_foreign = False

    @classmethod
    def foreign(
        cls,
        hf: HFTokenizer,
        *,
        eos_id: int,
        mask_id: int | None = None,
        pad_id: int | None = None,
        bos_id: int | None = None,
        stop_ids=(),
        chat_template: str | None = None,
    ) -> "Tokenizer":
        self = cls.__new__(cls)
        self.hf, self.eos_id, self.mask_id = hf, int(eos_id), None if mask_id is None else int(mask_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self.bos_id = self.eos_id if bos_id is None else int(bos_id)
        self.stop_ids = tuple(dict.fromkeys([self.eos_id, *map(int, stop_ids)]))
        self.chat_template, self.is_foreign = chat_template, True
        return self

    def add_mask_token(self, token: str = MASK) -> int:
        """Give a foreign tokenizer a mask token (an added special token, the next free id) and return its id; a
        tokenizer that has one keeps it."""
        if self.mask_id is None:
            self.hf = with_special_tokens(self.hf, [token])
            self.mask_id = self.hf.token_to_id(token)
        return self.mask_id

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (added-token ids of foreign tokenizers may leave gaps)."""
        return max(self.hf.get_vocab(with_added_tokens=True).values()) + 1

    def token(self, id_: int | None) -> str | None:
        return None if id_ is None else self.hf.id_to_token(int(id_))

    def special_config(self) -> dict:
        """What ``Tokenizer.foreign`` needs beside tokenizer.json, in ``tokenizer_config.json``'s spelling."""
        return {
            "bos_token": self.token(self.bos_id),
            "eos_token": self.token(self.eos_id),
            "pad_token": self.token(self.pad_id),
            "mask_token": self.token(self.mask_id),
            "stop_tokens": [self.token(i) for i in self.stop_ids],
            **({"chat_template": self.chat_template} if self.chat_template else {}),
        }

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(check_text(text), add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, the [start, end) character offsets of each token in ``text``)."""
        enc = self.hf.encode(check_text(text), add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    def to_str(self) -> str:
        return self.hf.to_str()

    def save(self, path: str | Path) -> None:
        """tokenizer.json, and beside it a foreign tokenizer's ``tokenizer_config.json`` (its special tokens)."""
        path = Path(path)
        self.hf.save(str(path))
        if self.is_foreign:
            (path.parent / "tokenizer_config.json").write_text(json.dumps(self.special_config(), indent=1))


def with_special_tokens(hf: HFTokenizer, tokens: list[str]) -> HFTokenizer:
    """``hf`` with those of ``tokens`` it lacks added as special tokens, each at an id no other token has.

    tokenizers numbers a new token after the model's vocabulary size, an id already in use when the vocabulary has
    a gap (a token deleted from tokenizer.json by hand, e.g. ``<|mask|>``): such tokens fill the lowest free ids
    instead, in the model's vocabulary and the added tokens both."""
    missing = [t for t in tokens if hf.token_to_id(t) is None]
    if not missing:
        return hf
    used = set(hf.get_vocab(with_added_tokens=True).values())
    trial = HFTokenizer.from_str(hf.to_str())
    trial.add_special_tokens(missing)
    if not any(trial.token_to_id(t) in used for t in missing):
        hf.add_special_tokens(missing)  # the usual case: the next ids are free
        return hf
    spec = json.loads(hf.to_str())
    vocab = spec.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):  # a Unigram model: ids are list positions, there are no gaps to fill
        raise DlmError(
            f"the tokenizer lacks {', '.join(missing)} and tokenizers would give it an id already in use; add it "
            "to tokenizer.json's added_tokens"
        )
    free = (i for i in range(len(used) + len(missing)) if i not in used)
    for token, id_ in zip(missing, free):
        vocab[token] = id_
        spec["added_tokens"].append(
            {
                "id": id_,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
    return HFTokenizer.from_str(json.dumps(spec))


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
    """Load a ``tokenizer.json`` (ours or any Hugging Face one). A ``tokenizer_config.json`` beside it with dlm's
    ``stop_tokens`` (what ``Tokenizer.save`` writes for a foreign tokenizer) makes it foreign again."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    hf = read_tokenizer_file(path)
    special = path.parent / "tokenizer_config.json"
    if special.exists():
        try:
            config = json.loads(special.read_text())
        except json.JSONDecodeError as e:
            raise DlmError(f"{special} is not valid JSON ({e}); restore it or delete it") from None
        if isinstance(config, dict) and "stop_tokens" in config:
            return foreign_tokenizer(hf, config)
    return Tokenizer(hf)


def read_tokenizer_file(path: Path) -> HFTokenizer:
    """A ``tokenizers.Tokenizer`` from a tokenizer.json, as it is; one-line errors for a missing or bad file."""
    if not path.exists():
        raise DlmError(f"tokenizer file {path} not found; pass a path to a tokenizer.json")
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception on malformed files
        raise DlmError(f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0]})") from None


def token_id(hf: HFTokenizer, token) -> int | None:
    """The id of a token given as a string, an ``AddedToken``-style mapping ({"content": ...}) or None."""
    if isinstance(token, dict):
        token = token.get("content")
    return None if not token else hf.token_to_id(token)


def foreign_tokenizer(hf: HFTokenizer, config: dict, *, eos_id=None, mask_id=None, bos_id=None, stop_ids=()):
    """A foreign ``Tokenizer`` from a ``tokenizer_config.json`` mapping; ids given here win over its tokens."""
    eos_id = eos_id if eos_id is not None else token_id(hf, config.get("eos_token"))
    if eos_id is None:
        eos_id = hf.token_to_id(EOS)
    if eos_id is None:
        raise DlmError("the tokenizer declares no end-of-sequence token (eos_token in tokenizer_config.json)")
    if mask_id is None:
        mask_id = token_id(hf, config.get("mask_token"))
    stops = [token_id(hf, t) for t in config.get("stop_tokens", [])] + list(stop_ids)
    return Tokenizer.foreign(
        hf,
        eos_id=eos_id,
        mask_id=mask_id,
        pad_id=token_id(hf, config.get("pad_token")),
        bos_id=bos_id if bos_id is not None else token_id(hf, config.get("bos_token")),
        stop_ids=[i for i in stops if i is not None],
        chat_template=config.get("chat_template") if isinstance(config.get("chat_template"), str) else None,
    )


def tokenizer_from_str(text: str) -> Tokenizer:
    return Tokenizer(HFTokenizer.from_str(text))
