"""An enumerable toy distribution over short sequences, and its exact conditional models."""

from __future__ import annotations

import itertools

import torch


class ToyDistribution:
    """p over all V^L sequences (V real tokens), with extra ids mask_id = V and eos_id = V + 1."""

    def __init__(self, V: int = 3, L: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.V, self.L = V, L
        self.mask_id, self.eos_id = V, V + 1
        self.vocab = V + 2
        self.seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))  # (V^L, L)
        logits = 2.0 * torch.randn(len(self.seqs), generator=g, dtype=torch.float64)
        self.p = logits.softmax(0)  # (V^L,)

    def nll(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact -log p(x0) per row of x0 [B, L]."""
        idx = (x0[:, None, :] == self.seqs[None]).all(-1).double().argmax(-1)
        return -self.p[idx].log()

    def denoiser(self, xt: torch.Tensor, t=None) -> torch.Tensor:
        """Exact p(x0^l = v | visible tokens of xt) as logits [B, L, vocab] (masked diffusion's ideal model)."""
        visible = xt != self.mask_id  # (B, L)
        consistent = ((self.seqs[None] == xt[:, None]) | ~visible[:, None]).all(-1)  # (B, N)
        w = self.p[None] * consistent  # (B, N)
        onehot = torch.nn.functional.one_hot(self.seqs, self.vocab).double()  # (N, L, vocab)
        probs = torch.einsum("bn,nlv->blv", w, onehot) / w.sum(-1)[:, None, None]
        return probs.clamp_min(1e-30).log().float()

    def next_token(self, inputs: torch.Tensor) -> torch.Tensor:
        """Exact AR conditionals p(x^l | x^{<l}) as logits [B, L, vocab] for inputs = [eos, x^0 .. x^{L-2}]."""
        B, L = inputs.shape
        assert torch.all(inputs[:, 0] == self.eos_id), "AR inputs must start with the EOS start token"
        out = torch.empty(B, L, self.vocab, dtype=torch.float64)
        for b in range(B):
            for l in range(L):
                prefix = inputs[b, 1 : l + 1]
                match = (self.seqs[:, :l] == prefix).all(-1) if l else torch.ones(len(self.seqs), dtype=torch.bool)
                w = self.p * match
                probs = torch.zeros(self.vocab, dtype=torch.float64).index_add(0, self.seqs[:, l], w)
                out[b, l] = (probs / w.sum()).clamp_min(1e-30).log()
        return out.float()
