"""Masked diffusion and the registry: num_samples, SUBS, MDLM's loss as the one-draw NELBO. Tightness with the exact
model and the bound for a wrong one are the objective contracts (tests/contracts/test_objective_contracts.py)."""

import pytest
import torch
from toy import ToyDistribution

import dlm
from dlm.errors import DlmError
from dlm.objectives import MDLM, OBJECTIVES, masked_nelbo, subs_log_probs


def test_masked_nelbo_averages_num_samples_draws():
    toy = ToyDistribution(V=3, L=3)
    g = torch.Generator().manual_seed(0)
    x0 = toy.seqs[:5]

    def spread(k):  # std over seeds of the K-draw estimate of one sequence
        runs = [
            masked_nelbo(
                toy.denoiser, x0, mask_id=toy.mask_id, num_samples=k, generator=torch.Generator().manual_seed(s)
            )
            for s in range(40)
        ]
        return torch.stack(runs).std(0)

    many = masked_nelbo(toy.denoiser, x0, mask_id=toy.mask_id, num_samples=8, generator=g)
    assert many.shape == (5,) and torch.all(many > 0)
    assert spread(16).mean() < spread(1).mean() / 2  # averaging 16 draws cuts the spread (about 4x)
    with pytest.raises(DlmError, match="num_samples"):
        masked_nelbo(toy.denoiser, x0, mask_id=toy.mask_id, num_samples=0)


def test_subs_ignores_the_model_at_unmasked_positions_and_the_mask_logit():
    toy = ToyDistribution(V=3, L=4, seed=2)
    x0 = toy.seqs[:20]

    def noisy(xt, t):  # garbage at unmasked positions and on the mask logit; exact elsewhere
        logits = toy.denoiser(xt)
        garbage = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7)) * 10
        logits = torch.where((xt == toy.mask_id)[..., None], logits, garbage)
        logits[..., toy.mask_id] = 50.0
        return logits

    a = masked_nelbo(toy.denoiser, x0, mask_id=toy.mask_id, num_samples=4, generator=torch.Generator().manual_seed(3))
    b = masked_nelbo(noisy, x0, mask_id=toy.mask_id, num_samples=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    log_p = subs_log_probs(torch.randn(2, 3, toy.vocab), toy.mask_id)
    assert torch.all(log_p[..., toy.mask_id] == float("-inf"))
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(2, 3))


def test_mdlm_loss_is_the_one_draw_nelbo_per_token():
    toy = ToyDistribution(V=3, L=3)
    x0 = toy.seqs
    mdlm = MDLM(mask_id=toy.mask_id, eos_id=toy.eos_id, vocab_size=toy.vocab, schedule="loglinear")
    out = mdlm.loss(toy.denoiser, x0, torch.Generator().manual_seed(5))
    loss = out.loss
    nelbo = masked_nelbo(toy.denoiser, x0, mask_id=toy.mask_id, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss, nelbo.mean() / x0.shape[1])
    assert isinstance(out.metrics["masked_frac"], torch.Tensor) and not out.metrics["masked_frac"].requires_grad
    assert torch.equal(mdlm.nll(toy.denoiser, x0, 1, torch.Generator().manual_seed(5)), nelbo)


def test_public_masked_nelbo_is_the_objective():
    assert dlm.masked_nelbo is masked_nelbo


def test_objective_registry():
    assert OBJECTIVES.names() == ["ar", "mdlm", "diffusion-lm", "sedd", "udlm", "bd3lm", "esolm"]
    assert OBJECTIVES.get("ar").causal and not OBJECTIVES.get("ar").is_bound
    assert not OBJECTIVES.get("mdlm").causal and OBJECTIVES.get("mdlm").is_bound
