"""dlm: diffusion language models — train, sample, evaluate, and compare with autoregressive models.

Public API:
    dlm.load(path, *, dtype=None, device="cpu", objective=None) -> (model, tokenizer, config)   a dlm run,
                 a Hugging Face folder (llama, qwen2, Dream, llada) or a .gguf file (dlm.loader)
    dlm.masked_nelbo(model, x0, *, mask_id, schedule="loglinear", num_samples=1, generator=None) -> Tensor[B]
    dlm.score_entropy_nelbo(model, x0, *, graph="absorb", mask_id, vocab_size=None, schedule="loglinear",
                            num_samples=1, generator=None) -> Tensor[B]                       (SEDD)
    dlm.udlm_nelbo(model, x0, *, mask_id, vocab_size, schedule="loglinear", num_samples=1,
                   generator=None) -> Tensor[B]                                              (UDLM)
    dlm.block_nelbo(model, x0, *, block_size, mask_id, schedule="loglinear", num_samples=1,
                    generator=None) -> Tensor[B]                                             (BD3-LM)
    dlm.generate(model, prompt, *, mask_id, gen_length, steps, block_length, temperature=0.0,
                 remasking="low_confidence", cfg_scale=0.0, generator=None) -> LongTensor[B, Lp + gen_length]
    dlm.Engine(model, tokenizer, run_config)    text in, text out: .generate(prompts, sampler=None, seed=0,
                 on_step=None, **options) -> list[Result]; dlm.Engine.load(path)
"""

from dlm.engine import Engine, Result
from dlm.loader import load
from dlm.objectives.block import block_nelbo
from dlm.objectives.masked import masked_nelbo
from dlm.objectives.score_entropy import score_entropy_nelbo
from dlm.objectives.udlm import udlm_nelbo
from dlm.samplers.confidence import confidence_generate as generate

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "Result",
    "load",
    "masked_nelbo",
    "score_entropy_nelbo",
    "udlm_nelbo",
    "block_nelbo",
    "generate",
    "__version__",
]
