"""Text corpora as lists of documents, split into training and validation.

Sources:
- ``austen`` (default, bundled): Jane Austen's six novels; validation = *Persuasion*, training = the other five.
- a local ``.txt`` file or a folder of ``.txt`` files (one document per file; the last ``val_fraction`` of the
  characters, cut at a paragraph break, is held out for validation), read as UTF-8 (``encoding``: another
  encoding): a file that is not valid text in it, or a binary file, is refused with what it looks like
  (``read_text_file``), never decoded with replacement characters;
- ``hf:NAME`` or ``hf:NAME:CONFIG`` (extra ``dlm[datasets]``): a Hugging Face dataset with a text column, or a
  local folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dlm.errors import DlmError

AUSTEN_TRAIN = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey"]
AUSTEN_VAL = ["persuasion"]


@dataclass
class Corpus:
    name: str
    train: list[str]  # documents
    val: list[str]

    def fingerprint(self) -> str:
        """A hash of the texts, used to key tokenizer and token caches."""
        h = hashlib.sha256()
        for split in (self.train, self.val):
            for doc in split:
                h.update(hashlib.sha256(doc.encode("utf-8")).digest())
            h.update(b"|")
        return h.hexdigest()[:16]


def unwrap_paragraphs(text: str) -> str:
    """Join hard-wrapped lines inside paragraphs; keep paragraph breaks (one blank line)."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    joined = (" ".join(line.strip() for line in p.strip().split("\n")) for p in paragraphs)
    return "\n\n".join(p for p in joined if p)


def _read_austen(name: str) -> str:
    path = resources.files("dlm.data").joinpath("austen", f"{name}.txt.gz")
    with path.open("rb") as f:
        return unwrap_paragraphs(gzip.decompress(f.read()).decode("utf-8"))


def _split_tail(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the last ``val_fraction`` of the characters, cut at a paragraph break."""
    if not 0.0 < val_fraction < 1.0:
        raise DlmError(f"val_fraction must be in (0, 1), got {val_fraction}")
    text = "\n\n".join(docs) if len(docs) == 1 else None
    if text is None:  # several documents: hold out whole documents from the end, at least one
        total = sum(len(d) for d in docs)
        val, size = [], 0
        while docs and (size < val_fraction * total or not val) and len(docs) > 1:
            val.insert(0, docs[-1])
            size += len(docs[-1])
            docs = docs[:-1]
        return docs, val
    cut = text.rfind("\n\n", 0, int(len(text) * (1.0 - val_fraction)))
    if cut <= 0:
        cut = int(len(text) * (1.0 - val_fraction))
    return [text[:cut].strip()], [text[cut:].strip()]


_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")  # no text holds these (tab, newlines, form feeds aside)


def _looks_like(data: bytes) -> str:
    """What bytes that failed to decode look like, for the error: UTF-16/32, binary, or a legacy 8-bit encoding."""
    for bom, name in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return f"it is {name.upper()} text (it starts with a {name.upper()} byte-order mark): --encoding {name}"
    head = data[:4096]
    if head.count(0) > len(head) // 4 and head[1::2].count(0) > len(head) // 4:
        return "it looks like UTF-16 text without a byte-order mark: --encoding utf-16-le"
    if 0 in head or len(_CONTROL.findall(head.decode("latin-1"))) > len(head) // 100:
        return ""
    return "it may be Windows-1252 / Latin-1 text: --encoding cp1252"


def read_text_file(path: Path, encoding: str = "utf-8") -> str:
    """The text of a data file, decoded strictly with ``encoding``; a one-line error for a file that is not valid
    text in it (naming the encoding it looks like) or a binary file."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DlmError(f"unknown --encoding {encoding!r}; e.g. utf-8, utf-16, cp1252, latin-1") from None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DlmError(f"cannot read {path}: {e.strerror}") from None
    utf8 = codecs.lookup(encoding).name == "utf-8"
    guess = _looks_like(data)
    try:
        if utf8 and guess.startswith("it is UTF"):  # valid UTF-8 bytes, in principle, but not meant as such
            raise UnicodeDecodeError(encoding, data, 0, 2, "a byte-order mark")
        text = data.decode("utf-8-sig" if utf8 else encoding)
    except UnicodeDecodeError as e:
        if not guess:
            raise DlmError(f"{path} is a binary file, not text; train on .txt files") from None
        raise DlmError(
            f"{path} is not valid {encoding} text (byte 0x{data[e.start]:02x} at offset {e.start}); {guess}, or "
            "convert it: iconv -f ENCODING -t utf-8"
        ) from None
    control = _CONTROL.findall(text)
    if "\x00" in control or len(control) > len(text) // 1000:
        hint = f"; {guess}" if guess.startswith("it looks like UTF-16") and utf8 else ""
        raise DlmError(f"{path} is a binary file, not {encoding} text ({len(control)} control characters){hint}")
    return text


def _load_local(path: Path, text_column: str, val_fraction: float, encoding: str = "utf-8") -> Corpus:
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            return _load_hf(str(path), text_column, val_fraction, local=True)
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise DlmError(f"no .txt files under {path}; pass a .txt file, a folder of them, or 'austen'")
    else:
        files = [path]
    docs = [unwrap_paragraphs(read_text_file(f, encoding)) for f in files]
    docs = [d for d in docs if d]
    if not docs:
        raise DlmError(f"{path} holds no text")
    train, val = _split_tail(docs, val_fraction)
    return Corpus(name=str(path), train=train, val=val)


def _load_hf(spec: str, text_column: str, val_fraction: float, local: bool = False) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise DlmError("Hugging Face datasets need the extra: pip install 'dlm[datasets]'") from None
    try:
        if local:
            ds = datasets.load_from_disk(spec)
        else:
            name, _, config = spec.partition(":")
            ds = datasets.load_dataset(name, config or None)
    except Exception as e:  # datasets raises many kinds (network, format, missing config)
        raise DlmError(
            f"could not load dataset {spec!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    if "train" not in ds:
        raise DlmError(f"dataset {spec!r} has no 'train' split (splits: {', '.join(ds)})")

    def texts(split) -> list[str]:
        if text_column not in split.column_names:
            raise DlmError(
                f"dataset {spec!r} has no column {text_column!r} (columns: {', '.join(split.column_names)}); "
                "set --set data.text_column=NAME"
            )
        return [t for t in split[text_column] if t and t.strip()]

    train = texts(ds["train"])
    val_split = next((s for s in ("validation", "valid", "test") if s in ds), None)
    if val_split is not None:
        return Corpus(name=spec, train=train, val=texts(ds[val_split]))
    n_val = max(1, int(len(train) * val_fraction))
    if len(train) < 2:
        raise DlmError(f"dataset {spec!r} has fewer than 2 texts; it cannot be split for validation")
    return Corpus(name=spec, train=train[:-n_val], val=train[-n_val:])


def load_corpus(
    name: str = "austen", *, text_column: str = "text", val_fraction: float = 0.05, encoding: str = "utf-8"
) -> Corpus:
    """Load a corpus by name or path (see the module docstring); ``encoding``: of local text files."""
    if name == "austen":
        return Corpus(
            name="austen",
            train=[_read_austen(n) for n in AUSTEN_TRAIN],
            val=[_read_austen(n) for n in AUSTEN_VAL],
        )
    if name.startswith("hf:"):
        return _load_hf(name[3:], text_column, val_fraction)
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path, text_column, val_fraction, encoding)
    raise DlmError(f"data {name!r} is not 'austen', an existing .txt file or folder, or 'hf:NAME'; check the path")
