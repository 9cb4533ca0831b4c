"""LoRA: identity at init, merge equals the explicit low-rank update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2s_jax import models
from w2s_jax.training import lora


def _model():
  return models.init_model(models.get_config("tiny-qwen2"), seed=0)


def test_init_is_identity_and_counts():
  model = _model()
  graphdef, state = nnx.split(model)
  adapters = lora.init_lora(state, rank=4, rng=jax.random.key(0))
  cfg = model.cfg
  d, n, k, h, f = (
      cfg.d_model,
      cfg.num_heads,
      cfg.num_kv_heads,
      cfg.head_dim,
      cfg.mlp_dim,
  )
  per_layer = 4 * (
      (d + n * h) + 2 * (d + k * h) + (n * h + d) + 2 * (d + f) + (f + d)
  )
  assert lora.num_params(adapters) == cfg.num_layers * per_layer
  tokens = jnp.arange(12).reshape(2, 6)
  merged = nnx.merge(graphdef, lora.merge(state, adapters, alpha=8.0, rank=4))
  np.testing.assert_array_equal(
      np.asarray(merged(tokens)), np.asarray(model(tokens))
  )


def test_merge_matches_numpy_low_rank_update():
  _, state = nnx.split(_model())
  adapters = lora.init_lora(
      state, rank=2, rng=jax.random.key(1), targets=("o_NHD",)
  )
  name = "blocks/0/attn/o_NHD"
  a = np.random.RandomState(0).randn(*adapters[name]["a"].shape)
  b = np.random.RandomState(1).randn(*adapters[name]["b"].shape)
  adapters[name] = {
      "a": jnp.asarray(a, jnp.float32),
      "b": jnp.asarray(b, jnp.float32),
  }
  merged = lora.merge(state, adapters, alpha=3.0, rank=2)
  w0 = np.asarray(state["blocks"][0]["attn"]["o_NHD"].get_value(), np.float64)
  w1 = np.asarray(merged["blocks"][0]["attn"]["o_NHD"].get_value(), np.float64)
  want = w0 + 1.5 * np.einsum("nhr,rd->nhd", a, b)
  np.testing.assert_allclose(w1, want, rtol=1e-5, atol=1e-5)
  # Untargeted kernels are untouched.
  np.testing.assert_array_equal(
      merged["blocks"][0]["attn"]["q_DNH"].get_value(),
      state["blocks"][0]["attn"]["q_DNH"].get_value(),
  )


def test_gradients_flow_only_into_adapters():
  graphdef, state = nnx.split(_model())
  adapters = lora.init_lora(state, rank=2, rng=jax.random.key(2))
  tokens = jnp.arange(10).reshape(2, 5)

  def loss(adapters):
    m = nnx.merge(graphdef, lora.merge(state, adapters, 4.0, 2))
    return jnp.mean(m(tokens) ** 2)

  grads = jax.grad(loss)(adapters)
  # b starts at zero, so a's gradient is zero and b's is not.
  g = grads["blocks/0/mlp/up_DF"]
  assert float(jnp.abs(g["a"]).max()) == 0.0
  assert float(jnp.abs(g["b"]).max()) > 0.0


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(rank=0), r"rank must be positive"),
        (dict(targets=("wq",)), r"unknown LoRA targets"),
    ],
)
def test_bad_lora_arguments(kw, msg):
  _, state = nnx.split(_model())
  args = dict(rank=2, rng=jax.random.key(0))
  args.update(kw)
  with pytest.raises(ValueError, match=msg):
    lora.init_lora(state, **args)


def test_stacked_layers_get_one_update_per_layer():
  """scan_layers: adapters carry the 'layers' axis; the adapted scanned model
  equals the adapted unrolled model with the same per-layer adapters."""
  cfg = models.get_config("tiny-qwen2")
  g0, s0 = nnx.split(models.init_model(cfg, seed=0))
  g1, s1 = nnx.split(models.init_model(cfg.replace(scan_layers=True), seed=0))
  targets = ("q_DNH", "o_NHD", "down_FD")
  per_layer = lora.init_lora(s0, rank=3, rng=jax.random.key(2), targets=targets)
  stacked = lora.init_lora(s1, rank=3, rng=jax.random.key(2), targets=targets)
  rs = np.random.RandomState(0)
  for name, ad in stacked.items():
    sub = name.removeprefix("blocks/")
    for part in ("a", "b"):  # random b: a non-zero update in every layer
      value = rs.randn(*ad[part].shape).astype(np.float32)
      ad[part] = jnp.asarray(value)
      for i in range(cfg.num_layers):
        per_layer[f"blocks/{i}/{sub}"][part] = jnp.asarray(value[i])
  assert len(per_layer) == cfg.num_layers * len(stacked)
  tokens = jnp.arange(12).reshape(2, 6)
  want = nnx.merge(g0, lora.merge(s0, per_layer, alpha=6.0, rank=3))(tokens)
  got = nnx.merge(g1, lora.merge(s1, stacked, alpha=6.0, rank=3))(tokens)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  base = nnx.merge(g0, s0)(tokens)
  assert float(jnp.max(jnp.abs(want - base))) > 1e-2  # the update is seen
