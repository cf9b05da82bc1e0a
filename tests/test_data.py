import pytest
import torch

from dlm.config import DataConfig
from dlm.data import SequenceLoader, load_corpus, load_packed, train_tokenizer
from dlm.data.corpus import unwrap_paragraphs
from dlm.errors import DlmError


def test_unwrap_joins_lines_and_keeps_paragraphs():
    text = "It is a truth\nuniversally acknowledged.\n\n\nChapter 2\n  Mr. Bennet\nsaid.\n"
    assert unwrap_paragraphs(text) == "It is a truth universally acknowledged.\n\nChapter 2 Mr. Bennet said."


def test_bundled_austen_split():
    corpus = load_corpus("austen")
    assert len(corpus.train) == 5 and len(corpus.val) == 1
    assert "Anne Elliot" in corpus.val[0]  # Persuasion
    assert all("Anne Elliot" not in d for d in corpus.train)
    assert "universally acknowledged" in corpus.train[1]  # Pride and Prejudice
    assert "\n\n" in corpus.val[0] and "acknowledged, that a single man" in corpus.train[1]


def test_tokenizer_training_is_deterministic_and_has_special_tokens():
    texts = [unwrap_paragraphs(load_corpus("austen").train[1][:200_000])]
    a, b = train_tokenizer(texts, 600), train_tokenizer(texts, 600)
    assert a.to_str() == b.to_str()
    assert a.vocab_size == 600
    assert len({a.eos_id, a.mask_id, a.pad_id}) == 3
    ids = a.encode("Mr. Darcy, café — naïve")
    assert a.decode(ids) == "Mr. Darcy, café — naïve"


def test_packed_data_is_cached(monkeypatch):
    cfg = DataConfig(seq_len=64)
    tok, train, val = load_packed(cfg)
    assert tok.vocab_size == 8192
    assert train.batch([0, 1]).shape == (2, 64) and len(val) > 100
    assert int(train.tokens.max()) < tok.vocab_size
    assert (torch.from_numpy(train.tokens[:200_000].astype("int64")) == tok.eos_id).sum() >= 1

    def fail(*a, **k):
        raise AssertionError("re-tokenized although the cache exists")

    monkeypatch.setattr(type(tok), "encode_batch", fail)
    tok2, train2, _ = load_packed(cfg)
    assert tok2.to_str() == tok.to_str() and len(train2) == len(train)


def test_local_text_file_and_folder(tmp_path):
    para = "The quick brown fox jumps over the lazy dog.\n\n"
    (tmp_path / "a.txt").write_text(para * 300)
    (tmp_path / "b.txt").write_text("Another document.\n\n" * 100)
    one = load_corpus(str(tmp_path / "a.txt"), val_fraction=0.1)
    assert len(one.train) == 1 and len(one.val) == 1 and one.val[0].startswith("The quick")
    both = load_corpus(str(tmp_path))
    assert both.train[0].startswith("The quick") and both.val[0].startswith("Another")
    with pytest.raises(DlmError, match="not 'austen'"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": [f"Document number {i}. " * 20 for i in range(40)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus(str(tmp_path / "ds"), val_fraction=0.1)
    assert len(corpus.train) == 36 and len(corpus.val) == 4
    with pytest.raises(DlmError, match="no column 'body'"):
        load_corpus(str(tmp_path / "ds"), text_column="body")


def test_loader_resumes_exactly():
    import numpy as np

    from dlm.data.packing import PackedDataset

    ds = PackedDataset(np.arange(40 * 8, dtype=np.uint16), 8)  # 40 sequences
    a = SequenceLoader(ds, seed=3)
    batches = [a.next_batch(6) for _ in range(15)]  # crosses epochs
    b = SequenceLoader(ds, seed=3)
    for _ in range(7):
        b.next_batch(6)
    c = SequenceLoader(ds, seed=3)
    c.load_state_dict(b.state_dict())
    for expected in batches[7:]:
        assert torch.equal(c.next_batch(6), expected)
    first_epoch = torch.cat(batches[:7])[:40, 0] // 8
    assert sorted(first_epoch.tolist()) == list(range(40))  # each sequence once per epoch
