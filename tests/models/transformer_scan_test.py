"""scan_layers == unrolled; matmul precision; the new model config keys."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2s_jax import models
from w2s_jax.decoding import sampler


def _tokens(batch, length, vocab, seed=0):
  return jnp.asarray(
      np.random.RandomState(seed).randint(0, vocab, (batch, length))
  )


def _unstacked_blocks(scanned_state, num_layers):
  """The scanned model's block parameters, split back per layer."""
  flat = dict(nnx.to_flat_state(scanned_state["blocks"]))
  return [
      {p: v.get_value()[i] for p, v in flat.items()} for i in range(num_layers)
  ]


@pytest.mark.parametrize(
    "preset", ["tiny-qwen2", pytest.param("tiny-qwen3", marks=pytest.mark.slow)]
)
def test_scanned_model_equals_unrolled_values_and_grads(preset):
  cfg = models.get_config(preset, remat="dots")
  tokens = _tokens(2, 10, cfg.vocab_size)
  seg = jnp.asarray([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 5 + [2] * 5])

  def run(cfg):
    graphdef, state = nnx.split(models.init_model(cfg, seed=3))

    def loss(state):
      logits = nnx.merge(graphdef, state)(tokens, segment_ids_BL=seg)
      return jnp.mean(jax.nn.logsumexp(logits, -1) * (seg != 0)), logits

    (l, logits), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return l, logits, g

  l0, logits0, g0 = run(cfg)
  l1, logits1, g1 = run(cfg.replace(scan_layers=True))
  np.testing.assert_allclose(logits1, logits0, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(l1, l0, atol=1e-6, rtol=1e-6)
  # Same seed -> same parameters, so gradients compare layer by layer.
  stacked = _unstacked_blocks(g1, cfg.num_layers)
  for i in range(cfg.num_layers):
    unrolled = dict(nnx.to_flat_state(g0["blocks"][i]))
    assert set(unrolled) == set(stacked[i])
    for path, v in unrolled.items():
      np.testing.assert_allclose(
          stacked[i][path], v.get_value(), atol=1e-6, rtol=1e-5
      )
  np.testing.assert_allclose(
      g1["embed_VD"].get_value(), g0["embed_VD"].get_value(), atol=1e-6
  )


def test_scanned_cached_decode_equals_full_forward():
  cfg = models.get_config("tiny-llama", scan_layers=True)
  model = models.init_model(cfg, seed=1)
  unrolled = models.init_model(cfg.replace(scan_layers=False), seed=1)
  tokens = _tokens(2, 12, cfg.vocab_size, seed=4)
  full = np.asarray(unrolled(tokens))
  cache = models.init_cache(cfg, batch_size=2, max_len=16)
  assert cache.layers[0].k_BSKH.shape[0] == cfg.num_layers
  prefill, cache = model(tokens[:, :5], cache=cache)
  steps = [prefill]
  step = jax.jit(lambda m, t, c: m(t, cache=c))
  for t in range(5, 12):
    logits, cache = step(model, tokens[:, t : t + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(
      np.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5
  )


@pytest.mark.slow  # ~10 s quiet; the cached-decode test covers the cache
def test_scanned_prefill_into_empty_cache_and_repeat():
  cfg = models.get_config("tiny-qwen2", scan_layers=True)
  model = models.init_model(cfg, seed=2)
  unrolled = models.init_model(cfg.replace(scan_layers=False), seed=2)
  tokens = _tokens(2, 6, cfg.vocab_size, seed=1)
  seg = jnp.asarray([[0, 0, 1, 1, 1, 1], [1] * 6])
  out = {}
  for name, m in (("scan", model), ("unrolled", unrolled)):
    logits, cache, _ = sampler.prefill_model(m, tokens, seg, 10, 2, 256)
    nxt, _ = sampler.decode_model(
        m, jnp.argmax(logits, -1), jnp.asarray([4, 6, 4, 6]), cache, 256
    )
    out[name] = (logits, nxt)
  np.testing.assert_allclose(out["scan"][0], out["unrolled"][0], atol=1e-5)
  np.testing.assert_allclose(out["scan"][1], out["unrolled"][1], atol=1e-5)


def test_scanned_hf_files_identical_and_reload(tmp_path):
  cfg = models.get_config("tiny-qwen2")
  unrolled = models.init_model(cfg, seed=5)
  scanned = models.init_model(cfg.replace(scan_layers=True), seed=5)
  models.save_pretrained(unrolled, str(tmp_path / "u"))
  models.save_pretrained(scanned, str(tmp_path / "s"))
  for name in ("model.safetensors", "config.json"):
    with open(tmp_path / "u" / name, "rb") as a:
      with open(tmp_path / "s" / name, "rb") as b:
        assert a.read() == b.read(), name
  reloaded = models.load_pretrained(str(tmp_path / "u"), scan_layers=True)
  assert reloaded.cfg.scan_layers
  tokens = _tokens(1, 7, cfg.vocab_size)
  np.testing.assert_allclose(reloaded(tokens), unrolled(tokens), atol=1e-5)


def _dot_precisions(cfg):
  """The precision parameter of every dot_general the forward pass traces."""
  model = models.init_model(cfg)
  jaxpr = jax.make_jaxpr(lambda t: model(t))(_tokens(1, 4, cfg.vocab_size))
  found = re.findall(r"dot_general\[.*?precision=(\S+?)[ \]]", str(jaxpr), re.S)
  assert len(found) >= 5 * cfg.num_layers  # qkv, scores, pv, o, gate/up..
  return set(found)


def test_matmul_precision_defaults_by_dtype_and_applies():
  fp32 = models.get_config("tiny-qwen2")
  assert fp32.precision == "highest"
  assert _dot_precisions(fp32) == {"(Precision.HIGHEST,"}
  bf16 = fp32.replace(dtype="bfloat16")
  assert bf16.precision == "default"
  assert fp32.replace(matmul_precision="high").precision == "high"
  assert _dot_precisions(bf16) == {"(Precision.DEFAULT,"}


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("matmul_precision", "tf32", "matmul_precision 'tf32'"),
        ("attention", "flash", "attention 'flash'"),
        ("remat", "all", "remat 'all'"),
    ],
)
def test_bad_model_values_are_config_errors(key, value, match):
  with pytest.raises(ValueError, match=match):
    models.get_config("tiny-qwen2", **{key: value})


def test_backend_the_platform_lacks_fails_at_model_build():
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU platform's error")
  cfg = models.get_config("tiny-qwen2", attention="cudnn")
  with pytest.raises(ValueError, match=r"'cudnn'.*platform 'cpu'"):
    models.init_model(cfg)
