"""``dlm export``: Llama-family models as Hugging Face folders that transformers reads with the same logits, and that
``dlm.load`` reads back with the same weights (diffusion models keep their objective, mask token and shift)."""

import json

import pytest
import torch
import transformers  # the hf extra, which make installs: missing, it is an error, not a skip

import dlm
from dlm.errors import DlmError
from dlm.export import export
from tests.helpers import dlm as run_cli
from tests.test_adapt import adapted
from tests.test_loading import TEXT, VOCAB, random_hf, write_tokenizer


def trained(tmp_path, objective, *extra):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)
    out = tmp_path / objective
    run_cli(
        "train", "--preset", "tiny", "--objective", objective, "--max-steps", "2", "--data", corpus, "--out", out,
        "--quiet", "--set", "data.vocab_size=300", "--set", "model.arch=llama", *extra,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_an_ar_export_loads_in_transformers_with_the_same_logits(tmp_path, bias):
    extra = ["--set", "model.n_kv_heads=2", "--set", f"model.qkv_bias={bias}"]
    run = trained(tmp_path, "ar", *extra)
    out = tmp_path / "export"
    run_cli("export", run, out)
    model, tokenizer, _ = dlm.load(run)
    ref = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(ref).__name__ == ("Qwen2ForCausalLM" if bias else "LlamaForCausalLM")
    x = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ref(x).logits, model(x), atol=1e-4, rtol=1e-4)
    again, tok2, cfg2 = dlm.load(out)
    assert cfg2.train.objective == "ar" and tok2.vocab_size == tokenizer.vocab_size
    assert (tok2.eos_id, tok2.mask_id, tok2.pad_id) == (tokenizer.eos_id, tokenizer.mask_id, tokenizer.pad_id)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    fast = transformers.AutoTokenizer.from_pretrained(out)
    assert fast("Emma was")["input_ids"] == tokenizer.encode("Emma was")


def test_an_adapted_diffusion_model_round_trips(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    random_hf("llama", seed=3).save_pretrained(folder)
    write_tokenizer(folder)
    model, tokenizer, cfg = adapted(folder)
    from dlm.export import export_hf

    out = export_hf(model, tokenizer, cfg, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    want = {"objective": "mdlm", "mask_token_id": VOCAB - 8, "logits_shift": True, "clean_causal": False}
    assert config["dlm"] == want
    again, tok2, cfg2 = dlm.load(out)
    assert cfg2.train.objective == "mdlm" and cfg2.model.logits_shift and not cfg2.model.causal
    assert tok2.mask_id == tokenizer.mask_id and tok2.stop_ids == tokenizer.stop_ids
    x = torch.randint(3, 80, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_what_cannot_be_exported_says_why(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)
    run = tmp_path / "dlm-arch"
    run_cli("train", "--preset", "tiny", "--max-steps", "1", "--data", corpus, "--out", run, "--quiet",
            "--set", "data.vocab_size=300")  # fmt: skip
    proc = run_cli("export", run, tmp_path / "out", check=False)
    assert proc.returncode == 2 and "model.arch=llama" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DlmError, match="not empty"):
        export(run, tmp_path / "full")
