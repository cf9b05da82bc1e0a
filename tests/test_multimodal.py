"""The X-Fusion miniature (dlm.multimodal): the frozen text tower, the masks of both orders, the VAE's shapes, a
short joint training run and both sampling directions, on a tiny text tower (CPU, seconds)."""

from __future__ import annotations

import copy

import pytest
import torch

from dlm.config import ModelConfig
from dlm.data.tokenizer import train_tokenizer
from dlm.errors import DlmError
from dlm.models.transformer import Transformer
from dlm.multimodal.data import (
    DATA_RANGE,
    TEMPLATES,
    THICKNESS,
    WORDS,
    CaptionCodec,
    caption,
    digit_named,
    load_digits_split,
)
from dlm.multimodal.masks import attention_mask
from dlm.multimodal.model import VARIANTS, XFusion
from dlm.multimodal.sample import caption_images, generate_images
from dlm.multimodal.train import MultimodalConfig, caption_ce, joint_loss, train_multimodal
from dlm.multimodal.vae import ConvVAE, latent_scale, patchify, train_vae, unpatchify
from dlm.noise.gaussian import add_noise
from dlm.objectives.gaussian import gaussian_loss


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids waiting on a second, busy core (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


@pytest.fixture(scope="module")
def codec():
    texts = [caption(d, s, k) for d in range(10) for s in range(3) for k in range(len(TEMPLATES))] * 4
    return CaptionCodec(train_tokenizer(texts, vocab_size=400))


def text_tower(vocab_size: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, causal=True)
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def captions_lm(codec):
    """A tiny text tower that has read the captions (a pretrained LM to freeze): 60 AR steps on them."""
    lm = text_tower(codec.tokenizer.vocab_size)
    texts = [caption(d, s, k) for d in range(10) for s in range(3) for k in range(len(TEMPLATES))]
    ids, valid = codec.encode(texts)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    for _ in range(60):
        logits = lm(ids)[:, :-1]  # (B, T - 1, V)
        loss = torch.nn.functional.cross_entropy(logits[valid[:, 1:]], ids[:, 1:][valid[:, 1:]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lm.eval()


@pytest.fixture(scope="module")
def latents(split):
    vae = train_vae(split[0].images, steps=60, seed=0)
    scale = latent_scale(vae, split[0].images)
    with torch.no_grad():
        return vae, scale, patchify(vae.encode(split[0].images)[0] * scale)  # (N, 4, 8)


# --- data ------------------------------------------------------------------------------------------------------------


def test_split_is_fixed_and_in_range(split):
    train, held = split
    assert (len(train), len(held)) == (1438, 359)
    again = load_digits_split()
    assert torch.equal(again[0].labels, train.labels) and torch.equal(again[1].images, held.images)
    assert train.images.shape[1:] == (1, 8, 8)
    assert train.images.min() >= DATA_RANGE[0] and train.images.max() <= DATA_RANGE[1]
    assert set(held.labels.tolist()) == set(range(10)) and set(train.thickness.tolist()) == {0, 1, 2}


def test_captions_name_their_digit(codec):
    for d in range(10):
        for s in range(len(THICKNESS)):
            for k in range(len(TEMPLATES)):
                assert digit_named(caption(d, s, k)) == d
    assert caption(7, 0, 2) == "the digit 7, drawn thinly" and caption(7, 2, 0) == "a handwritten seven"
    assert digit_named("a bold ") is None and digit_named("eight or nine") == 8
    ids, valid = codec.encode(["a handwritten seven", ""])
    assert ids.shape == (2, codec.length) and ids[:, 0].eq(codec.bos_id).all()
    assert valid[1].tolist() == [True, True] + [False] * (codec.length - 2) and ids[1, 1] == codec.eos_id
    assert codec.decode(ids[0, 1:].tolist()) == "a handwritten seven" and WORDS[7] == "seven"


# --- masks -----------------------------------------------------------------------------------------------------------


def test_attention_masks_equal_the_hand_written_matrices():
    # caption slots: BOS, w1, EOS, pad (T = 4); 2 image tokens
    valid = torch.tensor([[True, True, True, False]])
    t2i = torch.tensor(
        [  # keys: b  w1 e  pad i1 i2
            [1, 0, 0, 0, 0, 0],  # BOS
            [1, 1, 0, 0, 0, 0],  # w1
            [1, 1, 1, 0, 0, 0],  # EOS
            [1, 1, 1, 1, 0, 0],  # pad (causal; nothing reads it)
            [1, 1, 1, 0, 1, 1],  # image 1: the caption (not its pad) and the whole image
            [1, 1, 1, 0, 1, 1],  # image 2
        ],
        dtype=torch.bool,
    )
    i2t = torch.tensor(
        [  # keys: i1 i2 b  w1 e  pad
            [1, 1, 0, 0, 0, 0],  # image 1: the image only
            [1, 1, 0, 0, 0, 0],  # image 2
            [1, 1, 1, 0, 0, 0],  # BOS: the image, then causal text
            [1, 1, 1, 1, 0, 0],  # w1
            [1, 1, 1, 1, 1, 0],  # EOS
            [1, 1, 1, 1, 1, 1],  # pad
        ],
        dtype=torch.bool,
    )
    assert torch.equal(attention_mask("t2i", valid, 2)[0], t2i)
    assert torch.equal(attention_mask("i2t", valid, 2)[0], i2t)
    with pytest.raises(DlmError, match="choose one of: t2i, i2t"):
        attention_mask("both", valid, 2)


# --- VAE -------------------------------------------------------------------------------------------------------------


def test_vae_shapes_and_patches():
    vae = ConvVAE(channels=2)
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    mean, logvar = vae.encode(images)
    assert mean.shape == logvar.shape == (5, 2, 4, 4)
    out = vae.decode(mean)
    assert out.shape == (5, 1, 8, 8) and out.abs().max() <= 1.0
    tokens = patchify(mean)
    assert tokens.shape == (5, 4, 8)
    assert torch.equal(tokens[0, 1], mean[0, :, 0:2, 2:4].reshape(-1))  # token 1 = the top-right 2x2 patch
    assert torch.equal(unpatchify(tokens, 2), mean)


# --- the model -------------------------------------------------------------------------------------------------------


def test_layer_loop_reproduces_the_text_model(codec):
    """With the t2i mask a caption position sees only the caption: the dual tower's text features there give the
    text model's own logits (through the same blocks, an explicit mask instead of SDPA's causal flag)."""
    lm = text_tower(codec.tokenizer.vocab_size)
    model = XFusion(copy.deepcopy(lm), "dual-tower", patch_dim=8, n_image=4)
    ids, valid = codec.encode(["the digit 3, drawn boldly", "a handwritten one"])
    with torch.no_grad():
        text_h, _ = model("t2i", ids, valid, torch.randn(2, 4, 8), torch.rand(2))
        got = model.text_logits(text_h)
        want = lm(ids)
    keep = valid
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)


def test_unknown_variant_is_refused(codec):
    with pytest.raises(DlmError, match="choose one of: dual-tower, single-tower, dual-projection"):
        XFusion(text_tower(codec.tokenizer.vocab_size), "gated", patch_dim=8, n_image=4)
    with pytest.raises(DlmError, match="unknown multimodal variant"):
        MultimodalConfig(variant="gated")


@pytest.mark.parametrize("variant", ["dual-tower", "dual-projection"])
def test_frozen_text_tower_gets_no_gradient_and_keeps_its_outputs(variant, codec, split, latents):
    lm = text_tower(codec.tokenizer.vocab_size)
    model = XFusion(lm, variant, patch_dim=8, n_image=4)
    probe = torch.randint(3, codec.tokenizer.vocab_size, (3, 20))  # text-only input
    ids, valid = codec.encode(["a handwritten two", "the digit 5"])
    with torch.no_grad():
        before = lm(probe).clone()
        before_t2i = model.text_logits(model("t2i", ids, valid, torch.randn(2, 4, 8), torch.rand(2))[0])
    params_before = {k: v.clone() for k, v in lm.state_dict().items()}
    cfg = MultimodalConfig(variant=variant, steps=3, t2i_batch=8, i2t_batch=4, lr=1e-2, warmup_steps=1)
    g = torch.Generator().manual_seed(0)
    loss, _ = joint_loss(model, cfg, codec, split[0], latents[2], g)
    loss.backward()
    assert all(p.grad is None for p in lm.parameters())
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert not any(p.requires_grad for p in lm.parameters())
    train_multimodal(model, cfg, codec, split[0], latents[2])
    with torch.no_grad():
        assert torch.equal(lm(probe), before)  # bit-identical
        after_t2i = model.text_logits(model("t2i", ids, valid, torch.randn(2, 4, 8), torch.rand(2))[0])
        assert torch.equal(after_t2i, before_t2i)  # caption features ignore the image and the training
    assert all(torch.equal(v, params_before[k]) for k, v in lm.state_dict().items())


def test_single_tower_trains_the_text_weights(codec, split, latents):
    lm = text_tower(codec.tokenizer.vocab_size)
    model = XFusion(lm, "single-tower", patch_dim=8, n_image=4)
    before = lm.head.weight.clone()
    cfg = MultimodalConfig(variant="single-tower", steps=2, t2i_batch=8, i2t_batch=4, warmup_steps=1)
    train_multimodal(model, cfg, codec, split[0], latents[2])
    assert not torch.equal(lm.head.weight, before)


def test_trainable_parameter_counts_are_ordered(codec):
    counts = {
        v: sum(p.numel() for p in XFusion(text_tower(codec.tokenizer.vocab_size), v, 8, 4).trainable_parameters())
        for v in VARIANTS
    }
    assert counts["dual-projection"] < counts["dual-tower"] and counts["dual-projection"] < counts["single-tower"]


# --- training and sampling -------------------------------------------------------------------------------------------


def fixed_losses(model, codec, data, lat, cfg) -> tuple[float, float]:
    """Both losses on a fixed batch with fixed noise and times (comparable before and after training)."""
    g = torch.Generator().manual_seed(123)
    idx = torch.arange(64)
    ids, valid = codec.encode(codec.random_captions(data.labels[idx], data.thickness[idx], g))
    t = torch.linspace(0.05, 0.95, 64)
    with torch.no_grad():
        image = gaussian_loss(
            lambda x, tt: model.denoise(x, tt, ids, valid),
            lat[idx],
            schedule=cfg.schedule,
            target=cfg.target,
            generator=g,
            t=t,
        ).loss.item()
        text = caption_ce(model, lat[idx], torch.zeros(64), ids, valid).item()
    return image, text


def test_a_few_steps_lower_both_losses(codec, split, latents, captions_lm):
    model = XFusion(copy.deepcopy(captions_lm), "dual-tower", patch_dim=8, n_image=4)
    cfg = MultimodalConfig(steps=40, t2i_batch=32, i2t_batch=16, lr=3e-3, warmup_steps=5, text_weight=1.0)
    image0, text0 = fixed_losses(model, codec, split[0], latents[2], cfg)
    history = train_multimodal(model, cfg, codec, split[0], latents[2], log_every=10)
    image1, text1 = fixed_losses(model, codec, split[0], latents[2], cfg)
    assert image1 < 0.9 * image0 and text1 < 0.97 * text0, (image0, image1, text0, text1)
    assert len(history) == 4 and {"image_loss", "text_loss"} <= set(history[-1])


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m"])
def test_sampled_images_decode_to_8x8_in_range_and_captions_are_text(sampler, codec, latents):
    vae, scale, lat = latents
    model = XFusion(text_tower(codec.tokenizer.vocab_size), "dual-tower", patch_dim=8, n_image=4)
    g = torch.Generator().manual_seed(0)
    images = generate_images(
        model, codec, vae, scale, ["a handwritten four", "the digit 9"], sampler=sampler, steps=3, generator=g
    )
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    assert images.min() >= DATA_RANGE[0] and images.max() <= DATA_RANGE[1]
    again = generate_images(
        model,
        codec,
        vae,
        scale,
        ["a handwritten four", "the digit 9"],
        sampler=sampler,
        steps=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(images, again)  # same seed, same bits
    captions = caption_images(model, codec, lat[:3])
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)


def test_cond_noise_noises_the_understanding_images(codec, split, latents):
    x0 = latents[2][:4]
    x, _ = add_noise(x0, torch.full((4,), 0.3), "rectified-flow", torch.Generator().manual_seed(0))
    assert not torch.equal(x, x0)
    model = XFusion(text_tower(codec.tokenizer.vocab_size), "dual-tower", patch_dim=8, n_image=4)
    cfg = MultimodalConfig(steps=1, t2i_batch=4, i2t_batch=4, cond_noise=0.3)
    loss, metrics = joint_loss(model, cfg, codec, split[0], latents[2], torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and metrics["text_loss"] > 0
