"""The sampling flags of ``dlm sample`` map one to one onto the sampler config dataclasses."""

import typer.main

from dlm.cli import app
from dlm.samplers import sampler_options

# flags of `dlm sample` that belong to the Engine or the command, not to a sampler config
NOT_SAMPLER_OPTIONS = {
    "run_dir",
    "prompt",
    "prompt_file",
    "gen_length",
    "sampler",
    "stop_at_eos",
    "num_samples",
    "batch_size",
    "seed",
    "show_steps",
    "dtype",
    "device",
    "objective",
}


def sample_command():
    return typer.main.get_command(app).commands["sample"]


def test_every_sampler_option_has_a_flag_and_every_flag_an_option():
    params = {p.name: p for p in sample_command().params}
    flags = set(params) - NOT_SAMPLER_OPTIONS
    assert flags == set(sampler_options()), "dlm sample's flags and the sampler configs' fields disagree"
    for name in flags:  # spelled like the field, default "not given" so that only what the user sets is passed
        assert "--" + name.replace("_", "-") in params[name].opts
        assert params[name].default is None, f"--{name} must default to None (not given)"
