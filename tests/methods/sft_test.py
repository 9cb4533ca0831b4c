"""SFT (w2s_jax/methods/sft.py): completion-only cross-entropy against a
float64 reference, whatever the vocab chunk; no hyperparameters of its own."""

import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import methods, models
from w2s_jax.methods import sft

V, L, B, P = 24, 10, 3, 4


@pytest.mark.parametrize("chunk_size", [0, 8])
def test_sft_is_the_mean_cross_entropy_of_completion_tokens(chunk_size):
  cfg = models.get_config("tiny-qwen2", vocab_size=V, max_len=L)
  model = models.init_model(cfg, seed=0)
  rng = np.random.RandomState(0)
  lengths = np.array([L, L - 3, L - 1])
  seg = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  tokens = rng.randint(1, V, (B, L)) * seg
  mb = {
      "tokens": jnp.asarray(tokens, jnp.int32),
      "positions": jnp.asarray(np.tile(np.arange(L), (B, 1)) * seg, jnp.int32),
      "segment_ids": jnp.asarray(seg),
      "completion_mask": jnp.asarray(seg * (np.arange(L) >= P), jnp.int32),
  }
  hp = sft.SFT.hp({"chunk_size": chunk_size})
  norms = sft.SFT.normalizers(mb, hp)
  loss, _ = sft.SFT.loss(model, {}, mb, norms, hp)
  z = np.asarray(model(mb["tokens"], mb["positions"], mb["segment_ids"]))
  z = z.astype(np.float64)[:, :-1]
  lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
  nll = lse - np.take_along_axis(z, tokens[:, 1:, None], -1)[..., 0]
  m = np.asarray(mb["completion_mask"])[:, 1:] != 0
  assert float(norms["tokens"]) == m.sum()
  assert float(loss) == pytest.approx(nll[m].mean(), rel=1e-5)


def test_sft_has_only_the_shared_keys():
  spec = methods.get("sft")
  assert spec.hparams.keys() == ("vocab_size", "chunk_size")
  assert spec.data == "tokens" and spec.frozen == ()
  with pytest.raises(methods.HparamError, match=r"loss.mask_mode .*'sft'"):
    spec.hp({"mask_mode": "attention"})
  with pytest.raises(methods.HparamError, match=r"loss.chunk_size=-1 .*>= 0"):
    spec.hp({"chunk_size": -1})
