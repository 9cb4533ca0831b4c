"""The sampler and RSD give the single-device tokens on every mesh layout.

Meshes (data, fsdp, tensor) = (8,1,1), (2,4,1), (1,2,4), (2,2,2) under
``sharding.SAMPLING_RULES``: rows on data x fsdp, heads / MLP / vocab on
'tensor' (the 2 GQA kv heads stay replicated on a 4-way tensor axis), no
FSDP for weights. The draw of step t uses one key for the whole batch
(partitionable threefry), so the tokens must be identical, not just close.

Each mesh compiles its own prefill + decode loop (two models for RSD), so
the default run covers the sampler on (1,2,4) and (2,2,2) and RSD on
(2,2,2); the other cases are ``slow``.
"""

import jax
import numpy as np
import pytest

from w2s_jax import models, sharding
from w2s_jax.decoding import generation as gen

MESHES = [(8, 1, 1), (2, 4, 1), (1, 2, 4), (2, 2, 2)]
V = 64
# 4 ragged prompts x n=2 samples = 8 rows: one per device on the 8-way axes.
PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 7, 31, 8], [60, 6, 12, 19, 4], [50]]
SAMPLE_KW = dict(
    max_new_tokens=8, temperature=1.0, top_k=24, top_p=0.95, n=2, rng=11
)
RSD_KW = dict(
    max_new_tokens=8, rng=4, vocab_size=V, n=2, top_k=32, threshold=0.025
)


def _mesh_id(shape):
  return "x".join(map(str, shape))


@pytest.fixture(scope="module", autouse=True)
def _needs_eight_devices():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices; see tests/conftest.py")


@pytest.fixture(scope="module")
def pair():
  base = models.get_config(
      "tiny-qwen2",
      vocab_size=V,
      d_model=32,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      max_len=32,
      tie_embeddings=False,  # untied: varied greedy-ish continuations
  )
  teacher = models.init_model(base.replace(d_model=48, head_dim=12), seed=5)
  student = models.init_model(base.replace(num_layers=1), seed=6)
  return teacher, student


@pytest.fixture(scope="module")
def sample_ref(pair):
  out = gen.generate(pair[0], PROMPTS, **SAMPLE_KW)
  # Guards the equality below against a degenerate, constant output.
  assert len(set(out.tokens.ravel().tolist())) > 8
  return out


@pytest.fixture(scope="module")
def rsd_ref(pair):
  out = gen.rsd_generate(*pair, PROMPTS, **RSD_KW)
  assert 0 < out.from_teacher.mean() < 1  # both provenances occur
  return out


def _default_on(*shapes):
  """All meshes; those not in ``shapes`` run only with ``-m slow``."""
  return [
      pytest.param(m, marks=() if m in shapes else pytest.mark.slow)
      for m in MESHES
  ]


# tests/decoding/sampler_test.py covers (8,1,1)-style data parallelism in the
# default run; here the default run adds the tensor-heavy and 3-axis meshes.
@pytest.mark.parametrize(
    "mesh_shape", _default_on((1, 2, 4), (2, 2, 2)), ids=_mesh_id
)
def test_sampler_on_mesh_gives_single_device_tokens(
    pair, sample_ref, mesh_shape
):
  mesh = sharding.make_mesh(mesh_shape)
  out = gen.generate(pair[0], PROMPTS, mesh=mesh, **SAMPLE_KW)
  np.testing.assert_array_equal(out.tokens, sample_ref.tokens)
  np.testing.assert_array_equal(out.lengths, sample_ref.lengths)
  np.testing.assert_allclose(out.logprobs, sample_ref.logprobs, atol=1e-5)
  np.testing.assert_allclose(
      out.sampling_logprobs, sample_ref.sampling_logprobs, atol=1e-5
  )


@pytest.mark.parametrize("mesh_shape", _default_on((2, 2, 2)), ids=_mesh_id)
def test_rsd_on_mesh_gives_single_device_tokens(pair, rsd_ref, mesh_shape):
  mesh = sharding.make_mesh(mesh_shape)
  out = gen.rsd_generate(*pair, PROMPTS, mesh=mesh, **RSD_KW)
  np.testing.assert_array_equal(out.tokens, rsd_ref.tokens)
  np.testing.assert_array_equal(out.from_teacher, rsd_ref.from_teacher)
  np.testing.assert_array_equal(out.proposal, rsd_ref.proposal)
  np.testing.assert_allclose(out.logprobs, rsd_ref.logprobs, atol=1e-5)


def test_tied_table_copy_on_a_vocab_sharded_mesh(pair):
  # A tied table decodes through its kept [D, V] copy (decoding/unembedding);
  # with the vocab on 'tensor' the copy is sharded the same way, transposed.
  tied = models.init_model(pair[1].cfg.replace(tie_embeddings=True), seed=7)
  ref = gen.generate(tied, PROMPTS, **SAMPLE_KW)
  assert len(set(ref.tokens.ravel().tolist())) > 8
  out = gen.generate(
      tied, PROMPTS, mesh=sharding.make_mesh((1, 2, 4)), **SAMPLE_KW
  )
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
