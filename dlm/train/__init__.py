"""Training: the loop, optimiser and LR schedule, checkpoints, distributed setup."""
