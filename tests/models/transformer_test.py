"""Parity with transformers, cache == full forward, causality, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2s_jax import models, sharding, testing


def _load(tmp_path, hf_model, dtype=None, name="ckpt"):
  path = testing.save_hf_model(hf_model, str(tmp_path / name))
  return models.load_pretrained(path, dtype=dtype)


def _tokens(batch, length, vocab, seed=0):
  return np.random.RandomState(seed).randint(0, vocab, (batch, length))


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "llama"])
def test_logits_match_transformers_fp32(tmp_path, model_type):
  hf = testing.make_hf_model(model_type)
  model = _load(tmp_path, hf)
  tokens = _tokens(2, 24, hf.config.vocab_size)
  ref = testing.hf_logits(hf, tokens)
  # The parity bound holds on every backend because fp32 compute pins its
  # matmuls to 'highest' (TF32 on GPUs and bf16 passes on TPUs would not).
  assert model.cfg.precision == "highest"
  ours = np.asarray(model(jnp.asarray(tokens)))
  assert np.abs(ours - ref).max() <= 1e-4, jax.default_backend()


@pytest.mark.parametrize(
    "model_type,heads,kv_heads,head_dim",
    [("qwen2", 4, 4, 16), ("llama", 4, 2, 16), ("llama", 7, 1, 8)],
)
def test_gqa_ratios_match_transformers(
    tmp_path, model_type, heads, kv_heads, head_dim
):
  hf = testing.make_hf_model(
      model_type,
      hidden_size=56,
      num_attention_heads=heads,
      num_key_value_heads=kv_heads,
      head_dim=head_dim,
  )
  model = _load(tmp_path, hf)
  assert model.cfg.num_groups == heads // kv_heads
  tokens = _tokens(2, 16, hf.config.vocab_size, seed=1)
  ref = testing.hf_logits(hf, tokens)
  assert np.abs(np.asarray(model(jnp.asarray(tokens))) - ref).max() <= 1e-4


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_left_padding_matches_transformers(tmp_path, model_type):
  hf = testing.make_hf_model(model_type)
  model = _load(tmp_path, hf)
  tokens = _tokens(3, 20, hf.config.vocab_size, seed=2)
  pads = np.array([0, 5, 11])
  attn = (np.arange(20)[None, :] >= pads[:, None]).astype(np.int64)
  tokens = np.where(attn == 1, tokens, 0)
  ref = testing.hf_logits(hf, tokens, attention_mask=attn)
  ours = np.asarray(
      model(jnp.asarray(tokens), segment_ids_BL=jnp.asarray(attn))
  )
  real = attn.astype(bool)  # padded positions are garbage in both
  assert np.abs(ours[real] - ref[real]).max() <= 1e-4
  # Each row equals the unpadded row run alone.
  for b in range(3):
    alone = np.asarray(model(jnp.asarray(tokens[b : b + 1, pads[b] :])))
    np.testing.assert_allclose(ours[b, pads[b] :], alone[0], atol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "llama"])
def test_bf16_params_match_transformers(tmp_path, model_type):
  hf = testing.make_hf_model(model_type)
  path = testing.save_hf_model(hf, str(tmp_path / "bf16"), dtype="bfloat16")
  model = models.load_pretrained(path)  # keeps the checkpoint's bf16
  assert model.cfg.param_dtype == "bfloat16"
  tokens = _tokens(2, 16, hf.config.vocab_size, seed=3)
  ref = testing.hf_logits(hf, tokens)  # hf is now bf16 too
  ours = np.asarray(model(jnp.asarray(tokens)).astype(jnp.float32))
  assert np.abs(ours - ref).max() <= 2e-2


def test_bf16_checkpoint_loads_into_fp32(tmp_path):
  hf = testing.make_hf_model("qwen2")
  path = testing.save_hf_model(hf, str(tmp_path / "bf16"), dtype="bfloat16")
  model = models.load_pretrained(path, dtype="float32")
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(x.dtype == jnp.float32 for x in leaves)
  hf32 = hf.float()  # the bf16-rounded weights, computed in fp32
  tokens = _tokens(1, 12, hf.config.vocab_size)
  ref = testing.hf_logits(hf32, tokens)
  assert np.abs(np.asarray(model(jnp.asarray(tokens))) - ref).max() <= 1e-4


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-qwen3", "tiny-llama"])
def test_cached_decode_equals_full_forward(preset):
  cfg = models.get_config(preset)
  model = models.init_model(cfg, seed=1)
  tokens = jnp.asarray(_tokens(2, 12, cfg.vocab_size, seed=4))
  full = model(tokens)
  cache = models.init_cache(cfg, batch_size=2, max_len=16)
  prefill, cache = model(tokens[:, :5], cache=cache)
  steps = [prefill]
  for t in range(5, 12):
    logits, cache = model(tokens[:, t : t + 1], cache=cache)
    steps.append(logits)
  np.testing.assert_allclose(
      np.concatenate(steps, axis=1), np.asarray(full), atol=1e-5, rtol=1e-5
  )
  assert int(cache.end_index) == 12


def test_cached_decode_with_left_padding_equals_unpadded():
  cfg = models.get_config("tiny-qwen2")
  model = models.init_model(cfg, seed=2)
  toks = _tokens(1, 10, cfg.vocab_size, seed=5)
  full = np.asarray(model(jnp.asarray(toks)))
  # Row 0 is the sequence left-padded by 3; row 1 unpadded.
  padded = np.concatenate([np.zeros((1, 3), int), toks[:, :4]], axis=1)
  batch = np.concatenate([padded, toks[:, :7]], axis=0)
  seg = np.array([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
  cache = models.init_cache(cfg, batch_size=2, max_len=16)
  logits, cache = model(
      jnp.asarray(batch), segment_ids_BL=jnp.asarray(seg), cache=cache
  )
  np.testing.assert_allclose(logits[0, 3:], full[0, :4], atol=1e-5)
  for t in range(4, 10):
    nxt = jnp.asarray([[toks[0, t]], [toks[0, 0]]])
    logits, cache = model(nxt, cache=cache)
    np.testing.assert_allclose(logits[0, 0], full[0, t], atol=1e-5)


def test_causality():
  cfg = models.get_config("tiny-qwen3")
  model = models.init_model(cfg)
  tokens = _tokens(2, 16, cfg.vocab_size, seed=6)
  changed = tokens.copy()
  changed[:, 10:] = (changed[:, 10:] + 7) % cfg.vocab_size
  a = np.asarray(model(jnp.asarray(tokens)))
  b = np.asarray(model(jnp.asarray(changed)))
  np.testing.assert_array_equal(a[:, :10], b[:, :10])
  assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-3


def test_packed_segments_are_independent():
  cfg = models.get_config("tiny-llama")
  model = models.init_model(cfg)
  a, b = _tokens(1, 7, cfg.vocab_size, 7), _tokens(1, 5, cfg.vocab_size, 8)
  packed = np.concatenate([a, b, np.zeros((1, 2), int)], axis=1)
  seg = np.array([[1] * 7 + [2] * 5 + [0] * 2])
  out = np.asarray(model(jnp.asarray(packed), segment_ids_BL=jnp.asarray(seg)))
  np.testing.assert_allclose(
      out[0, :7], np.asarray(model(jnp.asarray(a)))[0], atol=1e-5
  )
  np.testing.assert_allclose(
      out[0, 7:12], np.asarray(model(jnp.asarray(b)))[0], atol=1e-5
  )


def test_hidden_and_unembedding_give_logits():
  cfg = models.get_config("tiny-qwen3")  # untied head
  model = models.init_model(cfg)
  tokens = jnp.asarray(_tokens(2, 8, cfg.vocab_size))
  h, _ = model.hidden(tokens)
  np.testing.assert_allclose(
      np.asarray(h @ model.unembedding_DV()),
      np.asarray(model(tokens)),
      atol=1e-5,
  )


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_keeps_values_and_grads(remat):
  cfg = models.get_config("tiny-qwen2")
  tokens = jnp.asarray(_tokens(2, 8, cfg.vocab_size))

  def loss_and_grad(cfg):
    graphdef, state = nnx.split(models.init_model(cfg, seed=3))

    def loss(state):
      return jnp.mean(jax.nn.logsumexp(nnx.merge(graphdef, state)(tokens), -1))

    return jax.jit(jax.value_and_grad(loss))(state)

  base = loss_and_grad(cfg)
  other = loss_and_grad(cfg.replace(remat=remat))
  testing.assert_trees_close(base, other, atol=1e-6, rtol=1e-5)


def test_fused_projections_equal_separate_values_and_grads(monkeypatch):
  # Accelerators fuse q/k/v and gate/up into one matmul each; CPU (this
  # suite) runs them apart. Forcing each path here keeps both tested.
  from w2s_jax.models import transformer  # noqa: PLC0415

  cfg = models.get_config("tiny-qwen2", num_heads=4, num_kv_heads=2)
  assert cfg.qkv_bias
  tokens = jnp.asarray(_tokens(2, 8, cfg.vocab_size))
  graphdef, state = nnx.split(models.init_model(cfg, seed=4))

  def loss(state):
    logits = nnx.merge(graphdef, state)(tokens)
    return jnp.mean(jax.nn.logsumexp(logits, -1)), logits

  def run(fused):
    monkeypatch.setattr(transformer, "fuse_projections", lambda: fused)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(state)

  (l_sep, z_sep), g_sep = run(False)
  (l_fus, z_fus), g_fus = run(True)
  assert np.abs(np.asarray(z_sep)).max() > 0.1  # a non-trivial comparison
  testing.assert_trees_close(
      (z_sep, g_sep), (z_fus, g_fus), atol=1e-6, rtol=1e-5
  )


@pytest.mark.parametrize("mesh_shape", [(2, 1, 4), (1, 2, 4), (2, 2, 2)])
def test_sharded_forward_equals_single_device(mesh_shape):
  cfg = models.get_config("tiny-qwen2", num_heads=8, num_kv_heads=4, head_dim=8)
  model = models.init_model(cfg, seed=4)
  tokens = jnp.asarray(_tokens(4, 16, cfg.vocab_size, seed=9))
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
  single = np.asarray(fwd(state, tokens))

  mesh = sharding.make_mesh(mesh_shape)
  with jax.set_mesh(mesh):
    shardings = sharding.state_shardings(state, mesh)
    sharded_state = jax.device_put(state, shardings)
    out = fwd(sharded_state, tokens)
  # Parameters really are split across devices.
  embed = sharded_state["embed_VD"].get_value()
  assert len(embed.sharding.device_set) == 8
  assert embed.addressable_shards[0].data.size < embed.size
  np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=1e-5)


def test_sharded_init_equals_eager_init():
  """With a mesh, every device initialises only its shards; same values."""
  cfg = models.get_config("tiny-qwen2", num_heads=8, num_kv_heads=4, head_dim=8)
  eager = nnx.state(models.init_model(cfg, seed=3))
  mesh = sharding.make_mesh((2, 2, 2))
  sharded = nnx.state(models.init_model(cfg, seed=3, mesh=mesh))
  embed = sharded["embed_VD"].get_value()
  assert (
      embed.sharding.spec
      == sharding.state_shardings(eager, mesh)["embed_VD"].get_value().spec
  )
  assert embed.addressable_shards[0].data.size < embed.size
  # Same random draws; jit may fuse the scaling (1-ulp differences).
  testing.assert_trees_close(eager, sharded, atol=1e-7, rtol=1e-6)


def test_abstract_model_under_an_active_mesh():
  """Logical axis names must not be resolved against the physical mesh."""
  cfg = models.get_config("tiny-qwen2")
  with jax.set_mesh(sharding.make_mesh((2, 2, 2))):
    abstract = models.transformer.abstract_model(cfg)
  shape = nnx.state(abstract)["embed_VD"].get_value().shape
  assert shape == (cfg.vocab_size, cfg.d_model)
