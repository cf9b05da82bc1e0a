"""lm-evaluation-harness adapter: ``--model dlm`` for any dlm model (the ``eval`` extra: ``pip install -e '.[eval]'``).

    python -m dlm.eval.harness --model dlm --model_args pretrained=runs/x,sampler=confidence,steps=64 \\
        --tasks hellaswag --batch_size 32        # lm_eval's own CLI, with "dlm" registered first

    lm = HarnessLM.from_loaded(model, tokenizer, run_config, num_samples=8)    # or HarnessLM(pretrained="runs/x")
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])

- ``loglikelihood(context, continuation)``: log p(continuation | context). AR: exact. mdlm: minus LLaDA's conditional
  Monte Carlo NELBO (``conditional_masked_nelbo``: only continuation positions are masked), a lower bound, with
  ``num_samples`` draws; ``is_greedy``: the argmax (diffusion: one step from the fully masked continuation)
  reproduces the continuation.
- ``loglikelihood_rolling(text)``: minus the objective's ``nll`` (exact for AR, a NELBO otherwise) over chunks of the
  model's context, chunk k drawn from the generator of ``dlm eval``'s batch k: a text that fits gets dlm eval's
  number for it.
- ``generate_until``: ``dlm.Engine`` with the configured sampler and its options, cut at the first ``until``
  string and after ``max_gen_toks`` tokens. A task's other generation settings (temperature, do_sample) are not
  used: the sampler's options come from the model arguments alone.

Every loglikelihood request draws from its own generator seeded as dlm eval's first batch, so its score depends only
on its text, ``seed`` and ``num_samples`` (the choices of a question share their random numbers). Contexts are cut
from the left to fit ``model.max_seq_len``; continuations never are. Importing this module imports ``lm_eval`` and
registers ``dlm``; ``import dlm`` does neither.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from dlm.engine import Engine, model_device
from dlm.errors import DlmError
from dlm.eval.likelihood import batch_seed
from dlm.noise.masked import subs_log_probs
from dlm.objectives import AR, MDLM, OBJECTIVES, conditional_masked_nelbo

CONDITIONAL = (AR, MDLM)  # objectives with a loglikelihood(context, continuation) estimate


class HarnessLM(LM):
    """A dlm model as an ``lm_eval`` LM. Model arguments: ``pretrained`` (a path ``dlm.load`` reads) or ``loaded``
    (``(model, tokenizer, run_config)``), ``sampler`` (default: the model's own), ``num_samples`` (Monte Carlo
    draws per loglikelihood request), ``seed``, ``batch_size`` (draws per model call; samples per generation batch),
    ``gen_length`` (tokens every generation makes; default: the request's ``max_gen_toks``, else ``max_gen_toks``),
    ``device`` (where ``pretrained`` is loaded, default cuda when there is one; a ``loaded`` model stays where it
    is), and any option of the sampler (steps, block_length, temperature, threshold, cache, ...)."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        loaded: tuple | None = None,
        sampler: str | None = None,
        num_samples: int = 128,
        seed: int = 0,
        batch_size: int | str | None = 16,
        max_batch_size: int | None = None,  # passed by lm_eval; unused
        gen_length: int | None = None,
        max_gen_toks: int = 256,
        device: str | None = None,
        **sampler_options,
    ):
        super().__init__()
        if (pretrained is None) == (loaded is None):
            raise DlmError("pass either pretrained=PATH or loaded=(model, tokenizer, run_config)")
        batch_size = 16 if batch_size is None else batch_size
        if isinstance(batch_size, str) and batch_size.isdigit():  # lm_eval's --batch_size is a string
            batch_size = int(batch_size)
        counts = dict(num_samples=num_samples, batch_size=batch_size, max_gen_toks=max_gen_toks)
        if gen_length is not None:
            counts["gen_length"] = gen_length
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DlmError(f"{name} must be a positive integer, got {value!r}")
        if loaded is None:
            import dlm

            loaded = dlm.load(pretrained, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer, config = loaded
        self.model, self.tokenizer, self.config = model.eval() if hasattr(model, "eval") else model, tokenizer, config
        self.engine = Engine(self.model, tokenizer, config)
        self.objective = OBJECTIVES.build(config, tokenizer)
        self.sampler, self.sampler_options = self.engine.sampler_config(sampler, **sampler_options)[0], sampler_options
        self.num_samples, self.seed, self.batch_size = num_samples, seed, batch_size
        self.gen_length, self.max_gen_toks = gen_length, max_gen_toks
        self.shift = bool(config.model.logits_shift)  # a shifted model reads a start token before the text
        self.max_len = config.model.max_seq_len - self.shift
        self._device = model_device(self.model)

    @classmethod
    def from_loaded(cls, model, tokenizer, run_config, **options) -> "HarnessLM":
        """The adapter of a model already in memory (``dlm.load``'s triple), with the model arguments as keywords."""
        return cls(loaded=(model, tokenizer, run_config), **options)

    # --- loglikelihood ---------------------------------------------------------------------------------------------

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        if not isinstance(self.objective, CONDITIONAL):
            names = ", ".join(c.name for c in CONDITIONAL)
            raise DlmError(
                f"loglikelihood(context, continuation) is implemented for the {names} objectives, not "
                f"{self.objective.name}; loglikelihood_rolling (perplexity tasks) works for every objective"
            )
        out = []
        for request in requests:
            context, continuation = request.args
            result = self.score(context, continuation)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
            out.append(result)
        return out

    @torch.no_grad()
    def score(self, context: str, continuation: str) -> tuple[float, bool]:
        """(log p(continuation | context), is_greedy) of one pair (see the module docstring)."""
        ctx, cont = self.encode_pair(context, continuation)
        if not cont:
            return 0.0, True
        if len(cont) > self.max_len:
            raise DlmError(
                f"a continuation of {len(cont)} tokens does not fit the model's context of {self.max_len} tokens"
            )
        ids = (ctx + cont)[-self.max_len :]  # the context is cut from the left
        x0 = torch.tensor(ids, device=self._device)  # (L,)
        if self.shift:  # the start token a shifted model scores position 0 after: context, never masked
            ids = [self.tokenizer.bos_id] + ids
            x0 = torch.tensor(ids, device=self._device)
        target = torch.arange(len(ids), device=self._device) >= len(ids) - len(cont)  # (L,) the continuation
        if isinstance(self.objective, AR):
            return self._ar_score(x0, target)
        generator = torch.Generator(device=self._device).manual_seed(batch_seed(self.seed, 0))
        nelbo = conditional_masked_nelbo(
            self.model,
            x0,
            target,
            mask_id=self.objective.mask_id,
            schedule=self.objective.schedule,
            num_samples=self.num_samples,
            generator=generator,
            batch_size=self.batch_size,
        )
        # greedy: one step from the fully masked continuation (t = 1, as the samplers' first step)
        xt = torch.where(target, self.objective.mask_id, x0)[None]  # (1, L)
        log_p = subs_log_probs(self.model(xt, torch.ones(1, device=self._device)), self.objective.mask_id)
        greedy = bool((log_p[0, target].argmax(-1) == x0[target]).all())
        return -float(nelbo), greedy

    def _ar_score(self, x0: torch.Tensor, target: torch.Tensor) -> tuple[float, bool]:
        """Exact: the log-probs of the target tokens after the start token (``<|endoftext|>`` for dlm's own
        tokenizers, a pretrained model's BOS) and x0[:-1]."""
        inputs = torch.cat([x0.new_tensor([self.objective.bos_id]), x0[:-1]])[None]  # (1, L)
        log_p = F.log_softmax(self.model(inputs).float(), dim=-1)[0, target]  # (T, V)
        tokens = x0[target]  # (T,)
        logprob = log_p.gather(-1, tokens[:, None]).sum()
        return float(logprob), bool((log_p.argmax(-1) == tokens).all())

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation): the context's trailing spaces move to the continuation; the
        continuation is what encoding the whole text adds to the context's ids (encoded apart if they disagree)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx, whole = self.tokenizer.encode(context), self.tokenizer.encode(context + continuation)
        if whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, self.tokenizer.encode(continuation)

    @torch.no_grad()
    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args
            ids = self.tokenizer.encode(text)
            total = torch.zeros((), dtype=torch.float64, device=self._device)
            for k, start in enumerate(range(0, len(ids), self.max_len)):
                x0 = torch.tensor([ids[start : start + self.max_len]], device=self._device)  # (1, L)
                generator = torch.Generator(device=self._device).manual_seed(batch_seed(self.seed, k))
                total += self.objective.nll(self.model, x0, self.num_samples, generator).double().sum()
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), -total.item())
            out.append(-total.item())
        return out

    # --- generation ------------------------------------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        jobs = []  # (prompt ids, gen_length, max_gen_toks, until)
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen_toks = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            length = self.gen_length or max_gen_toks
            if length >= self.max_len:
                raise DlmError(
                    f"gen_length {length} leaves no room for a prompt in the model's context of {self.max_len} "
                    "tokens; lower gen_length (or max_gen_toks)"
                )
            prompt = self.tokenizer.encode(context)[-(self.max_len - length) :] or [self.tokenizer.eos_id]
            jobs.append((prompt, length, max_gen_toks, until))
        texts: list[str | None] = [None] * len(jobs)
        for length in sorted({job[1] for job in jobs}):
            which = [i for i, job in enumerate(jobs) if job[1] == length]
            results = self.engine.generate_ids(
                [jobs[i][0] for i in which],
                self.sampler,
                self.seed,
                gen_length=length,
                stop_at_eos=True,
                batch_size=self.batch_size,
                **self.sampler_options,
            )
            for i, result in zip(which, results):
                texts[i] = cut(self.tokenizer.decode(result.tokens[: jobs[i][2]]), jobs[i][3])
        for request, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return texts


def cut(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any of the ``until`` strings."""
    end = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    return text[:end]


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line with ``--model dlm`` available: ``python -m dlm.eval.harness ARGS`` is ``lm_eval
    ARGS``."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except DlmError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":  # python -m dlm.eval.harness: the importable module's class is the one registered
    from dlm.eval.harness import main

    main()
else:
    register_model("dlm")(HarnessLM)
