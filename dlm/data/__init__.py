"""Corpora, tokenizer and packed token streams."""

from dlm.data.corpus import Corpus, load_corpus
from dlm.data.packing import PackedDataset, SequenceLoader, load_packed
from dlm.data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "Corpus",
    "load_corpus",
    "Tokenizer",
    "load_tokenizer",
    "train_tokenizer",
    "PackedDataset",
    "SequenceLoader",
    "load_packed",
]
