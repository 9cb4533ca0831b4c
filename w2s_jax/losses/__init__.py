"""Losses of w2s_jax: pure fp32 functions returning (loss, metrics).

See docs/losses.md for the table of losses, their conventions and papers.
"""

from w2s_jax.losses.aggregation import (
    AGG_MODES,
    aggregate,
    normalizer,
    token_weights,
)
from w2s_jax.losses.chunked import (
    chunked_cross_entropy,
    chunked_divergence,
    chunked_topk_divergence,
    chunked_weighted_sum,
)
from w2s_jax.losses.divergences import (
    DIVERGENCES,
    divergence,
    jsd,
    kl_divergence,
    logprob_divergence,
    skew_kl,
    skew_reverse_kl,
    token_divergence,
    tvd,
)
from w2s_jax.losses.policy_gradient import (
    KD_MASKING,
    KL_ESTIMATORS,
    ampo_loss,
    grpo_loss,
    kd_keep_mask,
    kd_token_loss,
    kdrl_beta,
    kdrl_loss,
    sampled_kl,
)
from w2s_jax.losses.rewards_shaping import (
    ampo_guidance,
    dynamic_sampling_filter,
    group_advantages,
    overlong_penalty,
)
from w2s_jax.losses.sequence import (
    dpo,
    redi,
    sequence_logprob,
    sft_cross_entropy,
    simpo,
    token_entropy,
    token_logprobs,
)
from w2s_jax.losses.topk import (
    TOPK_MODES,
    topk_divergence,
    topk_token_divergence,
)

__all__ = [
    "AGG_MODES",
    "DIVERGENCES",
    "KD_MASKING",
    "KL_ESTIMATORS",
    "TOPK_MODES",
    "aggregate",
    "ampo_guidance",
    "ampo_loss",
    "chunked_cross_entropy",
    "chunked_divergence",
    "chunked_topk_divergence",
    "chunked_weighted_sum",
    "divergence",
    "dpo",
    "dynamic_sampling_filter",
    "grpo_loss",
    "group_advantages",
    "jsd",
    "kd_keep_mask",
    "kd_token_loss",
    "kdrl_beta",
    "kdrl_loss",
    "kl_divergence",
    "logprob_divergence",
    "normalizer",
    "overlong_penalty",
    "redi",
    "sampled_kl",
    "sequence_logprob",
    "sft_cross_entropy",
    "simpo",
    "skew_kl",
    "skew_reverse_kl",
    "token_divergence",
    "token_entropy",
    "token_logprobs",
    "token_weights",
    "topk_divergence",
    "topk_token_divergence",
    "tvd",
]
