"""Distillation from a teacher top-k cache written by the `topk_cache` job.

One step from the cache equals the fused step that cuts the live teacher to
the same top-k (and, with k = V, the fused full-distribution step); a cache
that does not belong to the data or the tokenizer fails with a message.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from w2s_jax import config_lib, jobs, main, methods, testing
from w2s_jax.data import char_vocab, tokenizers
from w2s_jax.methods import kd as kd_lib
from w2s_jax.training import inputs, steps, trainer

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
K = 8


def _cfg(arg, **over):
  cfg = config_lib.load(os.path.join(ROOT, f"configs/distill.py:{arg}"))
  for section in ("student", "teacher"):
    cfg[section].overrides.d_model = 32
    cfg[section].overrides.num_layers = 1
    cfg[section].overrides.mlp_dim = 64
  cfg.teacher.seed = 3
  cfg.data.num_examples = 8
  cfg.train.batch_size = 4
  cfg.train.tensorboard = False
  for key, value in over.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
  """Caches with k = 8 and k = V, written by the job from the same teacher."""
  root = tmp_path_factory.mktemp("kd")
  vocab = char_vocab.build_char_tokenizer().get_vocab_size()
  paths = {}
  for k in (K, vocab):
    wd = str(root / f"k{k}")
    jobs.run("topk_cache", _cfg(f"make_cache,k={k}"), wd)
    paths[k] = os.path.join(wd, "topk.array_record")
  return str(root), paths, vocab


def _one_step(cfg, method, loss_cfg, workdir, with_teacher):
  tok = inputs.load_tokenizer("char", workdir)
  s_def, s_state = nnx.split(trainer.build_model(cfg.student, tok))
  frozen, defs = {}, {}
  if with_teacher:
    defs["teacher"], frozen["teacher"] = nnx.split(
        trainer.build_model(cfg.teacher, tok)
    )
  batches = inputs.make_batches("distill_cache", cfg.data, tok, 4, seed=0)
  batch = jax.tree.map(jnp.asarray, inputs.split_micro(next(batches), 1))
  tx = optax.sgd(1.0)
  m = methods.get(method)
  spec = steps.StepSpec(m, s_def, defs, tx, m.hp(loss_cfg))
  state = {"params": s_state, "opt": tx.init(s_state), "step": jnp.int32(0)}
  return jax.jit(steps.make_train_step(spec))(state, frozen, batch)


def _assert_same_step(a, b):
  (sa, ma), (sb, mb) = a, b
  assert float(mb["distill/num_tokens"]) > 0
  assert float(ma["train/loss"]) == pytest.approx(
      float(mb["train/loss"]), rel=1e-5, abs=1e-7
  )
  assert float(ma["train/grad_norm"]) == pytest.approx(
      float(mb["train/grad_norm"]), rel=1e-5
  )
  testing.assert_trees_close(sa["params"], sb["params"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["tail_bucket", "renormalized"])
def test_cache_step_equals_fused_topk_step(caches, mode):
  root, paths, _ = caches
  cfg = _cfg(f"topk_cache={paths[K]}")
  base = {"divergence": "fkl", "temperature": 1.0, "topk_mode": mode}
  from_cache = _one_step(
      cfg, "distill_cache", {**base, "teacher_temperature": 1.0}, root, False
  )
  fused = _one_step(cfg, "distill", {**base, "topk": K}, root, True)
  _assert_same_step(from_cache, fused)
  # The top-k loss is a real restriction: the full-distribution step differs.
  full = _one_step(cfg, "distill", {"divergence": "fkl"}, root, True)
  assert abs(
      float(full[1]["train/loss"]) - float(fused[1]["train/loss"])
  ) > 1e-4 * float(full[1]["train/loss"])


def test_cache_with_k_equal_vocab_equals_fused_full_step(caches):
  root, paths, vocab = caches
  cfg = _cfg(f"topk_cache={paths[vocab]}")
  kd = {"divergence": "fkl", "temperature": 1.0}
  # renormalized over all V ids is exactly p. (tail_bucket at k = V keeps a
  # rest bucket of fp32 rounding mass, 1 − Σ_V p ≈ 1e-7, which moves the
  # loss by ~1e-5 relative.)
  from_cache = _one_step(
      cfg, "distill_cache", {**kd, "topk_mode": "renormalized"}, root, False
  )
  fused = _one_step(cfg, "distill", kd, root, True)
  _assert_same_step(from_cache, fused)


def test_misaligned_cache_fails_with_message(caches):
  root, paths, _ = caches
  tok = inputs.load_tokenizer("char", root)
  other_data = _cfg(f"topk_cache={paths[K]}", **{"data.seed": 1}).data
  batches = inputs.make_batches("distill_cache", other_data, tok, 4, seed=0)
  with pytest.raises(ValueError, match=r"misaligned with the data.*Rebuild"):
    next(batches)
  fewer = _cfg(f"topk_cache={paths[K]}", **{"data.num_examples": 6}).data
  with pytest.raises(ValueError, match=r"has 8 examples but the data config"):
    inputs.make_batches("distill_cache", fewer, tok, 4, seed=0)


def test_vocab_or_tokenizer_mismatch_fails_with_message(caches, tmp_path):
  root, paths, _ = caches
  data = _cfg(f"topk_cache={paths[K]}").data
  small = str(tmp_path / "small")
  char_vocab.save_char_tokenizer(small, alphabet="xyz0123456789")
  with pytest.raises(ValueError, match=r"vocab_size=40 but the tokenizer"):
    inputs.open_topk_cache(data, tokenizers.load_tokenizer(small))
  # Same size, other characters: only the fingerprint tells them apart.
  same_size = str(tmp_path / "same")
  alphabet = char_vocab.synthetic.ALPHABET.replace("u", "z")
  char_vocab.save_char_tokenizer(same_size, alphabet=alphabet)
  with pytest.raises(ValueError, match=r"another tokenizer"):
    inputs.open_topk_cache(data, tokenizers.load_tokenizer(same_size))
  with pytest.raises(ValueError, match=r"set data.topk_cache"):
    inputs.open_topk_cache(_cfg("").data, tokenizers.load_tokenizer(small))


def test_cache_temperature_must_match_tail_bucket_loss(caches):
  from w2s_jax.data import topk_cache

  _, paths, _ = caches
  header = topk_cache.TopKCacheReader(paths[K]).header
  with pytest.raises(ValueError, match=r"recorded at 1.0.*topk_mode"):
    kd_lib.DistillHparams(temperature=2.0).for_cache(header)
  got = kd_lib.DistillHparams(temperature=2.0, topk_mode="renormalized")
  assert got.for_cache(header).teacher_temperature == 1.0


@pytest.mark.slow
def test_train_from_cache_through_main(caches, tmp_path):
  _, paths, _ = caches
  cfg = _cfg(
      f"runlocal,topk_cache={paths[K]}",
      **{"train.steps": 2, "data.num_examples": 8, "train.batch_size": 4},
  )
  assert cfg.method == "distill_cache"
  result = main.run_job(cfg, str(tmp_path / "wd"))
  assert np.isfinite(result["train/loss"]) and result["distill/num_tokens"] > 0
  assert os.path.exists(tmp_path / "wd" / "export" / "model.safetensors")
