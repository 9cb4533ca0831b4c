"""Decoding: the jitted KV-cache sampler and reverse speculative decoding.

The trace-sampling job built on it is ``w2s_jax.jobs.sample_traces``.
"""

from w2s_jax.decoding.generation import (
    GenerateOutput,
    RSDGenerateOutput,
    generate,
    prepare_prompts,
    rsd_generate,
)
from w2s_jax.decoding.reverse_spec import (
    RSDConfig,
    RSDOutput,
    RSDState,
    make_rsd_sampler,
    shared_vocab_size,
)
from w2s_jax.decoding.rsd_rule import RSDChoice, RSDParams, rsd_choose
from w2s_jax.decoding.sampler import (
    DecodeConfig,
    SamplerOutput,
    SamplingState,
    make_sampler,
)
from w2s_jax.decoding.sampling_params import (
    SamplingParams,
    processed_logprobs,
    sample_logits,
)

__all__ = [
    "DecodeConfig",
    "GenerateOutput",
    "RSDChoice",
    "RSDConfig",
    "RSDGenerateOutput",
    "RSDOutput",
    "RSDParams",
    "RSDState",
    "SamplerOutput",
    "SamplingParams",
    "SamplingState",
    "generate",
    "make_rsd_sampler",
    "make_sampler",
    "prepare_prompts",
    "processed_logprobs",
    "rsd_choose",
    "rsd_generate",
    "sample_logits",
    "shared_vocab_size",
]
