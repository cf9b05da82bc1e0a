"""Forward processes only: schedules alpha(t) and corruption processes. Nothing here calls a model."""

from dlm.noise.block import mask_blocks, sample_block_times
from dlm.noise.gaussian import GAUSSIAN_SCHEDULES, GaussianSchedule, add_noise, get_gaussian_schedule
from dlm.noise.masked import mask_tokens
from dlm.noise.schedules import SCHEDULES, Schedule, get_schedule, sample_times
from dlm.noise.uniform import uniform_tokens

__all__ = [
    "SCHEDULES",
    "Schedule",
    "get_schedule",
    "sample_times",
    "mask_tokens",
    "uniform_tokens",
    "mask_blocks",
    "sample_block_times",
    "GAUSSIAN_SCHEDULES",
    "GaussianSchedule",
    "get_gaussian_schedule",
    "add_noise",
]
