"""Forward processes only: schedules alpha(t) and corruption processes. Nothing here calls a model."""

from dlm.noise.masked import mask_tokens
from dlm.noise.schedules import SCHEDULES, Schedule, get_schedule, sample_times

__all__ = ["SCHEDULES", "Schedule", "get_schedule", "sample_times", "mask_tokens"]
