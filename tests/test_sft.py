"""SFT (``dlm.data.sft``, ``dlm.objectives.sft``, ``dlm.train.sft``, ``dlm.train.lora``, ``dlm sft``): the prompt is
never masked and costs nothing, the loss is the conditional NELBO of the response, chat templates as the tokenizer
says, EOS padding trained, a tiny fine-tune learns a generated task, cond-dropout hides the prompt, CFG at scale 0
is the conditional model, LoRA trains only its adapters and merges exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dlm.cli import app
from dlm.data.chat import render_chat, split_turn
from dlm.data.sft import BucketLoader, SFTExample, collate, encode_examples, record_texts
from dlm.engine import Engine
from dlm.errors import DlmError
from dlm.loader import load
from dlm.models.transformer import Transformer
from dlm.objectives import OBJECTIVES, conditional_masked_nelbo
from dlm.objectives.sft import response_nelbo, sft_loss
from dlm.train.lora import ADAPTER_FILE, LoRA
from tests.sft_helpers import accuracy, facts_world, fine_tune

MASK = 1  # <|mask|> in the word tokenizer (SPECIAL_TOKENS order: EOS, MASK, PAD)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (more only contend on a shared machine), set before the module's runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return facts_world(tmp_path_factory.mktemp("sft"))


@pytest.fixture(scope="module")
def tuned(world, tmp_path_factory):
    base, data, _ = world
    out = tmp_path_factory.mktemp("sft") / "tuned"
    fine_tune(base, data, out, steps=250, sft__cond_dropout=0.1)
    return out


class Spy(torch.nn.Module):
    """A model that records its inputs and returns trainable logits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table, self.inputs = torch.nn.Embedding(vocab, vocab), []

    def forward(self, x, t=None, **kw):
        self.inputs.append(x.clone())
        return self.table(x)


def rows(tok, n=6):
    records = [{"prompt": f"Who is the mentor of Row{i}?", "response": "Bram Hollet."} for i in range(n)]
    return records


# --- the loss --------------------------------------------------------------------------------------------------


def test_the_prompt_is_never_masked_and_carries_no_loss(world):
    _, _, tok = world
    batch = collate([SFTExample((5, 6, 7, 8), (9, 10, 0)), SFTExample((5, 6), (11, 0))], tok.eos_id)
    spy = Spy(tok.vocab_size)
    for seed in range(20):
        spy.inputs.clear()
        nll = response_nelbo(
            spy, batch.tokens, batch.response, mask_id=MASK, generator=torch.Generator().manual_seed(seed)
        )
        [xt] = spy.inputs
        assert torch.equal(xt[~batch.response], batch.tokens[~batch.response])  # prompt positions as they are
        nll.sum().backward()
        grads = spy.table.weight.grad
        prompt_only = set(batch.tokens[~batch.response].tolist()) - set(batch.tokens[batch.response].tolist())
        assert all(grads[i].abs().sum() == 0 for i in prompt_only)  # no gradient reaches a prompt token's row
        spy.table.weight.grad = None


def test_the_loss_equals_the_conditional_nelbo_of_the_response(world):
    _, _, tok = world
    torch.manual_seed(0)
    model = Transformer(load(world[0])[2].model).eval()
    examples = [SFTExample((5, 6, 7, 8), (9, 10, 0)), SFTExample((5,), (11, 12, 13, 0)), SFTExample((7, 7, 7), (0,))]
    batch = collate(examples, tok.eos_id)
    for j in range(len(examples)):
        for seed in range(5):
            x0, target = batch.tokens[j], batch.response[j]
            ours = response_nelbo(
                model, x0[None], target[None], mask_id=MASK, generator=torch.Generator().manual_seed(seed)
            )
            reference = conditional_masked_nelbo(
                model, x0, target, mask_id=MASK, num_samples=1, generator=torch.Generator().manual_seed(seed)
            )
            assert ours[0].item() == reference.item()


def test_eos_padding_is_part_of_the_response_and_trained(world):
    _, _, tok = world
    batch = collate([SFTExample((5, 6), (9, 0)), SFTExample((5, 6), (9, 10, 11, 0))], tok.eos_id)
    assert batch.tokens[0].tolist() == [5, 6, 9, 0, 0, 0] and batch.response[0].tolist() == [0, 0, 1, 1, 1, 1]
    assert batch.padding[0].tolist() == [0, 0, 0, 0, 1, 1] and not batch.padding[1].any()
    cfg = load(world[0])[2]
    mdlm = OBJECTIVES.build(cfg, tok)
    spy = Spy(tok.vocab_size)
    # t near 1: everything in the response is masked, so every EOS (own and padding) is predicted
    logits_grad = []
    spy.table.register_full_backward_hook(lambda m, gi, go: logits_grad.append(go[0]))
    out = sft_loss(mdlm, spy, batch, torch.Generator().manual_seed(3))
    out.loss.backward()
    [g] = logits_grad
    trained = g.abs().sum(-1) > 0  # (B, L) positions whose prediction the loss depends on
    assert not (trained & ~batch.response).any()
    # over many draws every response position, the padding included, is trained by mdlm
    seen = torch.zeros_like(batch.response)
    for seed in range(30):
        logits_grad.clear()
        sft_loss(mdlm, spy, batch, torch.Generator().manual_seed(seed)).loss.backward()
        seen |= logits_grad[0].abs().sum(-1) > 0
    assert torch.equal(seen, batch.response)
    # AR trains the response and its own EOS, not the padding after it
    cfg.train.objective = "ar"
    logits_grad.clear()
    sft_loss(OBJECTIVES.build(cfg, tok), spy, batch, None).loss.backward()
    assert torch.equal(logits_grad[0].abs().sum(-1) > 0, batch.response & ~batch.padding)


# --- data ------------------------------------------------------------------------------------------------------


def test_chat_template_applied_as_the_tokenizer_says(world):
    _, _, tok = world
    record = {"prompt": "hello there", "response": "Be brief."}
    assert record_texts(record, tok) == ("User: hello there\nAssistant:", " Be brief.\n")  # the default template
    assert record_texts(record, tok, "raw") == ("hello there", "Be brief.")
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "there"},
    ]
    try:
        tok.chat_template = chatml
        prompt, response = record_texts({"messages": messages}, tok)
        assert prompt == render_chat(tok, messages[:-1])
        assert (
            prompt
            == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
        )
        assert response == "there<|im_end|>\n"
        [example], dropped = encode_examples([{"messages": messages}], tok, max_len=64, start=[tok.bos_id])
        assert example.prompt == (tok.bos_id, *tok.encode(prompt)) and dropped == 0
        assert example.response == (*tok.encode(response), tok.eos_id)  # the template's end of turn, then EOS
    finally:
        tok.chat_template = None
    with pytest.raises(DlmError, match="last message .* must be the assistant's"):
        split_turn(tok, messages[:-1])
    with pytest.raises(DlmError, match="needs the chat template"):
        record_texts({"messages": messages}, tok, "raw")


def test_buckets_hold_similar_lengths_and_are_reproducible():
    examples = [SFTExample((1,) * (i % 10 + 1), (0,)) for i in range(64)]
    a, b = BucketLoader(examples, 8, seed=3), BucketLoader(examples, 8, seed=3)
    spreads = []
    for _ in range(16):  # two epochs
        x, y = a.next_batch(0), b.next_batch(0)
        assert torch.equal(x.tokens, y.tokens)
        lengths = (~x.padding).sum(1)
        spreads.append(int(lengths.max() - lengths.min()))
    assert max(spreads) <= 2  # 64 examples of 10 lengths in batches of 8: at most two lengths a batch


# --- fine-tuning -----------------------------------------------------------------------------------------------


def test_a_tiny_fine_tune_learns_the_facts(tuned):
    # 250 steps reach 8/8 (measured), with or without CFG; the untrained base gets 0
    assert accuracy(Engine.load(tuned)) >= 0.75


def test_cfg_scale_zero_is_the_conditional_model(tuned):
    engine = Engine.load(tuned)
    question = [{"role": "user", "content": "Who is the mentor of " + "Wenros Wenquinis?"}]
    plain = engine.chat(question, gen_length=8, temperature=0.5, seed=1)
    zero = engine.chat(question, gen_length=8, temperature=0.5, seed=1, cfg_scale=0.0)
    assert zero.tokens == plain.tokens and zero.nfe == plain.nfe
    guided = engine.chat(question, gen_length=8, cfg_scale=1.0)  # runs: the unconditional rows mask the prompt
    assert guided.nfe > 0 and accuracy(engine, cfg_scale=1.0) >= 0.75


def test_cond_dropout_one_keeps_the_prompt_from_the_model(world):
    _, _, tok = world
    cfg = load(world[0])[2]
    objective = OBJECTIVES.build(cfg, tok)
    a = collate([SFTExample((5, 6, 7), (9, 0)), SFTExample((8, 8, 5), (10, 0))], tok.eos_id)
    b = collate([SFTExample((11, 12, 13), (9, 0)), SFTExample((6, 7, 6), (10, 0))], tok.eos_id)  # other prompts
    for seed in range(5):
        seen = []
        for batch in (a, b):
            spy = Spy(tok.vocab_size)
            sft_loss(objective, spy, batch, torch.Generator().manual_seed(seed), cond_dropout=1.0)
            seen.append(spy.inputs[0])
            assert (spy.inputs[0][~batch.response] == MASK).all()
        assert torch.equal(seen[0], seen[1])  # the model's input does not depend on the prompt
    with pytest.raises(DlmError, match="applies to mdlm, not ar"):
        cfg.train.objective = "ar"
        sft_loss(OBJECTIVES.build(cfg, tok), Spy(tok.vocab_size), a, None, cond_dropout=0.5)


def test_ar_and_shifted_models_fine_tune(tmp_path):
    base, data, tok = facts_world(tmp_path, objective="ar")
    fine_tune(base, data, tmp_path / "ar", steps=150)
    assert accuracy(Engine.load(tmp_path / "ar")) >= 0.75  # the AR baseline learns it as well (8/8 measured)
    base, data, tok = facts_world(tmp_path, logits_shift=True)
    fine_tune(base, data, tmp_path / "shift", steps=5)
    engine = Engine.load(tmp_path / "shift")
    assert engine.config.model.logits_shift
    assert engine.chat([{"role": "user", "content": "hello"}], gen_length=4).nfe > 0


# --- LoRA ------------------------------------------------------------------------------------------------------


def test_lora_trains_only_its_adapters_and_merges_exactly(world):
    _, _, tok = world
    torch.manual_seed(0)
    model = Transformer(load(world[0])[2].model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = LoRA(model, rank=2, alpha=4.0, seed=1)
    assert len(lora.A) == 2 * 4  # 2 blocks x (qkv, out, mlp.0, mlp.2)
    with torch.no_grad():  # B starts at zero (the adapted model is the base); give it a value
        for p in lora.B.values():
            p.normal_(std=0.1)
    x = torch.randint(3, tok.vocab_size, (2, 10))
    model(x).square().mean().backward()
    assert all(p.grad is None for p in model.parameters())  # the model is frozen
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.parameters())
    with torch.no_grad():
        adapted = model(x)
        plain = lora.merged_model()  # a plain Transformer of the merged weights
        assert torch.allclose(plain(x), adapted, atol=1e-5)
        with lora.merged():
            assert torch.allclose(model(x), adapted, atol=1e-5)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())  # the base restored bit for bit
    assert set(plain.state_dict()) == set(base)  # the base shape: no adapter keys


def test_lora_fine_tune_saves_a_plain_merged_checkpoint(world, tmp_path):
    base, data, _ = world
    fine_tune(base, data, tmp_path / "lora", steps=20, train__lora_rank=4, train__lr=1e-2)
    model, _, cfg = load(tmp_path / "lora")  # strict: every key of a Transformer, no adapters
    source, _, _ = load(base)
    adapter = load_file(str(tmp_path / "lora" / "checkpoint" / ADAPTER_FILE))
    assert cfg.train.lora_rank == 4 and len(adapter) == 2 * 8
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, source.state_dict()[k])]
    assert changed and all(("attn" in k or "mlp" in k) and k.endswith("weight") for k in changed)


def test_dlm_train_init_with_lora_resumes_on_its_adapters(world, tmp_path):
    base, _, _ = world
    runner, out = CliRunner(), tmp_path / "adapt"
    text = tmp_path / "words.txt"
    text.write_text(" ".join(["Who is the mentor of hello there?"] * 400))
    common = ["train", "--init", str(base), "--lora", "2", "--data", str(text), "--quiet", "--out", str(out)]
    common += ["--set", "data.seq_len=16", "--set", "train.batch_size=4", "--set", "train.log_every=2"]
    result = runner.invoke(app, [*common, "--max-steps", "4"])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint" / ADAPTER_FILE).exists()
    result = runner.invoke(app, [*common, "--max-steps", "6", "--resume"])
    assert result.exit_code == 0, result.output
    load(out)  # a plain checkpoint
    with pytest.raises(DlmError, match="--init"):
        from dlm.presets import preset_config

        cfg = preset_config("tiny")
        cfg.train.lora_rank = 2
        cfg.validate()


def test_dlm_sft_end_to_end(world, tmp_path):
    base, data, _ = world
    result = CliRunner().invoke(
        app,
        ["sft", str(base), "--data", str(data), "--out", str(tmp_path / "cli"), "--max-steps", "3", "--quiet"]
        + ["--set", "sft.cond_dropout=0.1", "--lora", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "LoRA rank 2" in result.output and load(tmp_path / "cli")[2].sft.cond_dropout == 0.1
