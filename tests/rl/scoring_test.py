"""RL scoring: the student's, reference's and teacher's log-probs of the
sampled tokens in one jitted call (the losses are tested in tests/methods/)."""

import jax
import numpy as np
import pytest
from flax import nnx

from w2s_jax import testing
from w2s_jax.decoding import generation
from w2s_jax.rl import rollouts, scoring

G, N, P, T = 4, 2, 3, 5  # group size, prompts, prompt width, new tokens
B, L = G * N, P + T


_model = testing.rl_model


def _batch(seed=0):
  """A hand-made RL batch: ragged left-padded prompts, ragged completions."""
  batch = testing.rl_batch(G, N, P, T, seed)
  batch["rewards"][0] = [1, 0, 0, 1]  # non-constant groups
  batch["rewards"][1] = [0, 1, 1, 1]
  return batch


_np_lp = testing.np_token_logprobs


def test_score_step_matches_independent_forward():
  student, teacher = _model(0), _model(1, d=48, layers=2)
  sg, ss = nnx.split(student)
  tg, ts = nnx.split(teacher)
  batch = _batch()
  score = jax.jit(
      scoring.make_score_fn(
          sg, {"teacher": tg, "ref": sg}, scoring.ScoringHparams()
      )
  )
  got, _ = score(ss, {"teacher": ts, "ref": ss}, batch)
  mask = batch["completion_mask"][:, 1:] != 0
  for name, model in (("old", student), ("teacher", teacher)):
    np.testing.assert_allclose(
        np.where(mask, got[f"{name}_logprobs"], 0.0),
        np.where(mask, _np_lp(model, batch), 0.0),
        atol=2e-5,
    )
  np.testing.assert_array_equal(got["ref_logprobs"], got["old_logprobs"])


@pytest.mark.slow
def test_score_step_matches_the_sampler_logprobs():
  student = _model(0)
  sg, ss = nnx.split(student)
  prompts = [[5, 6, 7], [8, 9]]
  out = generation.generate(
      student, prompts, max_new_tokens=T, temperature=1.0, n=G, rng=0,
      eos_ids=2, pad_id=0, bucket=1,
  )  # fmt: skip
  tok_BP, seg_BP = generation.prepare_prompts(prompts, pad_id=0)
  tok_BP, seg_BP = np.repeat(tok_BP, G, 0), np.repeat(seg_BP, G, 0)
  batch = rollouts._assemble(tok_BP, seg_BP, out.tokens, out.lengths)  # noqa: SLF001
  got, _ = jax.jit(scoring.make_score_fn(sg, {}, scoring.ScoringHparams()))(
      ss, {}, batch
  )
  p = tok_BP.shape[1]
  mask = batch["completion_mask"][:, 1:] != 0
  # π_old of column t is the sampler's log-prob of completion token t - P + 1.
  old = np.asarray(got["old_logprobs"])[:, p - 1 :]
  np.testing.assert_allclose(
      np.where(mask[:, p - 1 :], old, 0.0), out.logprobs, atol=2e-4
  )
