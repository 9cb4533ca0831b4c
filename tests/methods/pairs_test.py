"""Preference pairs (w2s_jax/methods/pairs.py): REDI, DPO and SimPO losses
against float64 references from the model's own logits; their typed
hyperparameters (defaults, bounds, no foreign keys)."""

import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import methods, models
from w2s_jax.methods import pairs

V, L, B, P = 24, 9, 3, 4  # P prompt tokens per completion


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _side(rng, lengths):
  tokens = rng.randint(1, V, (B, L)).astype(np.int32)
  seg = (np.arange(L)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  return {
      "tokens": jnp.asarray(tokens * seg),
      "positions": jnp.asarray(np.tile(np.arange(L), (B, 1)) * seg, jnp.int32),
      "segment_ids": jnp.asarray(seg),
      "completion_mask": jnp.asarray(seg * (np.arange(L) >= P), jnp.int32),
  }


@pytest.fixture(scope="module")
def setup():
  cfg = models.get_config("tiny-qwen2", vocab_size=V, max_len=L)
  student, ref = models.init_model(cfg, seed=0), models.init_model(cfg, seed=3)
  rng = np.random.RandomState(0)
  # The last pair has an empty rejected completion: it does not count.
  w, l = _side(rng, [L, L - 2, L]), _side(rng, [L - 1, L, P])
  mb = {f"chosen_{k}": v for k, v in w.items()}
  mb.update({f"rejected_{k}": v for k, v in l.items()})
  return student, ref, mb


def _seq_logprobs(model, mb, side):
  """(sum, mean) of the completion tokens' log-probs per row, float64."""
  tokens = np.asarray(mb[f"{side}_tokens"])
  z = np.asarray(
      model(
          mb[f"{side}_tokens"],
          mb[f"{side}_positions"],
          mb[f"{side}_segment_ids"],
      ),
      np.float64,
  )
  lp = np.take_along_axis(_log_softmax(z)[:, :-1], tokens[:, 1:, None], -1)
  m = np.asarray(mb[f"{side}_completion_mask"])[:, 1:]
  total = (lp[..., 0] * m).sum(-1)
  return total, total / np.maximum(m.sum(-1), 1)


def _run(spec, setup, **hp):
  student, ref, mb = setup
  h = spec.hp(hp)
  norms = spec.normalizers(mb, h)
  assert float(norms["pairs"]) == 2.0  # the pair with an empty side is out
  return spec.loss(student, {"ref": ref}, mb, norms, h)[0]


def test_redi_is_minus_s_w_plus_alpha_s_l(setup):
  _, s_w = _seq_logprobs(setup[0], setup[2], "chosen")
  _, s_l = _seq_logprobs(setup[0], setup[2], "rejected")
  want = (-s_w + 0.5 * s_l)[:2].mean()
  got = _run(pairs.REDI, setup, alpha=0.5)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_dpo_against_the_frozen_reference(setup):
  student, ref, mb = setup
  lw, _ = _seq_logprobs(student, mb, "chosen")
  ll, _ = _seq_logprobs(student, mb, "rejected")
  rw, _ = _seq_logprobs(ref, mb, "chosen")
  rl, _ = _seq_logprobs(ref, mb, "rejected")
  x = 0.3 * ((lw - rw) - (ll - rl))
  want = np.log1p(np.exp(-x))[:2].mean()
  assert float(_run(pairs.DPO, setup, beta=0.3)) == pytest.approx(
      want, rel=1e-5
  )


def test_simpo_is_a_margin_on_length_normalised_logprobs(setup):
  _, s_w = _seq_logprobs(setup[0], setup[2], "chosen")
  _, s_l = _seq_logprobs(setup[0], setup[2], "rejected")
  x = 2.5 * (s_w - s_l) - 0.5
  want = np.log1p(np.exp(-x))[:2].mean()
  got = _run(pairs.SIMPO, setup, beta=2.5, gamma=0.5)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_defaults_bounds_and_keys():
  assert methods.get("redi").hp(None).alpha == 0.8
  assert methods.get("dpo").hp(None).beta == 0.1
  simpo = methods.get("simpo").hp(None)
  assert (simpo.beta, simpo.gamma) == (2.0, 1.0)
  assert methods.get("dpo").frozen == ("ref",)
  assert {methods.get(n).data for n in ("redi", "dpo", "simpo")} == {"pairs"}
  for name, key, value, bound in [
      ("redi", "alpha", 1.5, "in [0, 1]"),
      ("dpo", "beta", 0.0, "> 0"),
      ("simpo", "beta", -2.0, "> 0"),
      ("simpo", "gamma", -1.0, ">= 0"),
  ]:
    with pytest.raises(methods.HparamError) as e:
      methods.get(name).hp({key: value})
    msg = str(e.value)
    assert f"loss.{key}={value!r}" in msg and f"'{name}'" in msg, msg
    assert f"it must be {bound}" in msg, msg
  # REDI's alpha is not a DPO hyperparameter (the old shared dict took it).
  with pytest.raises(methods.HparamError, match=r"loss.alpha .* 'dpo'"):
    methods.get("dpo").hp({"alpha": 0.8})
