"""Mesh construction and the logical-axis rules."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from w2s_jax import models, sharding


def test_strict_shardings_name_the_parameter():
  cfg = models.get_config("tiny-qwen2", d_model=60, head_dim=16)
  state = nnx.state(models.abstract_model(cfg))
  mesh = sharding.make_mesh((1, 8, 1))
  with pytest.raises(
      ValueError,
      match=(
          r"parameter \['blocks'\]\[0\]\['attn'\]\['k_DKH'\] of shape \(60, 2,"
          r" 16\).*do not divide dimension 60"
      ),
  ):
    sharding.state_shardings(state, mesh, strict=True)


def test_mesh_shape_must_match_devices():
  with pytest.raises(ValueError, match=r"needs 6 devices but 8 are available"):
    sharding.make_mesh((3, 2, 1))


def test_mesh_fill_axis():
  mesh = sharding.make_mesh((2, -1, 1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  mesh = sharding.make_mesh({"tensor": 8})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 8}


def test_logical_to_spec_drops_non_dividing_and_reused_axes():
  mesh = sharding.make_mesh((2, 1, 4))
  # 2 kv heads cannot be split 4 ways: replicated; batch 6 splits over data.
  spec = sharding.logical_to_spec(
      ("batch", "length", "act_kv_heads", None), (6, 5, 2, 8), mesh
  )
  assert spec == P("data", None, None, None)
  assert sharding.logical_to_spec(("vocab", "embed"), (16, 8), mesh) == P(
      "tensor", None
  )


def test_sampling_rules_do_not_shard_weights_on_fsdp():
  mesh = sharding.make_mesh((1, 8, 1))
  state = nnx.state(models.abstract_model(models.get_config("tiny-qwen2")))
  train = sharding.state_shardings(state, mesh)
  sample = sharding.state_shardings(state, mesh, sharding.SAMPLING_RULES)
  assert train["embed_VD"].get_value().spec == P(None, "fsdp")
  assert sample["embed_VD"].get_value().spec == P(None, None)


def test_shard_is_identity_without_mesh():
  x = jnp.ones((4, 3))
  assert sharding.shard(x, "batch", "act_embed") is x
  with jax.set_mesh(sharding.make_mesh((8, 1, 1))):
    y = jax.jit(lambda x: sharding.shard(x, "batch", "act_embed"))(
        jnp.ones((8, 3))
    )
  assert y.sharding.spec in (P("data"), P("data", None))


def test_unknown_logical_axis():
  with pytest.raises(KeyError, match=r"'nope' has no rule"):
    sharding.logical_to_spec(("nope",), (4,), sharding.make_mesh((8, 1, 1)))


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, -1, 1), r"cannot fill 8 devices: 8 is not divisible by 3"),
        ((-1, -1, 2), r"at most one axis may be -1"),
        ((2, 4), r"must have 3 entries for axes \('data', 'fsdp', 'tensor'\)"),
        ((0, 8, 1), r"axis 'data' has size 0; sizes must be positive"),
        ((2, -2, 1), r"axis 'fsdp' has size -2"),
        ({"model": 8}, r"unknown axes \['model'\]; valid axes"),
        ((16, 1, 1), r"needs 16 devices but 8 are available"),
    ],
)
def test_bad_mesh_shapes_name_the_problem(shape, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(shape)


def test_mesh_over_explicit_devices():
  mesh = sharding.make_mesh((2, 2, 1), devices=jax.devices()[:4])
  assert mesh.devices.shape == (2, 2, 1)
  assert [d.id for d in mesh.devices.ravel()] == [0, 1, 2, 3]
  with pytest.raises(ValueError, match=r"needs 8 devices but 4 are available"):
    sharding.make_mesh((8, 1, 1), devices=jax.devices()[:4])


def test_strict_names_kv_heads_not_divisible_by_tensor():
  # tiny-llama's 2 kv heads cannot be split 8 ways on 'tensor'.
  state = nnx.state(models.abstract_model(models.get_config("tiny-llama")))
  with pytest.raises(
      ValueError,
      match=r"parameter \['blocks'\]\[0\]\['attn'\]\['k_DKH'\] of shape"
      r" \(64, 2, 16\): mesh axes \('tensor',\) of total size 8 do not divide"
      r" dimension 2",
  ):
    sharding.state_shardings(state, sharding.make_mesh((1, 1, 8)), strict=True)


def test_dropped_axes_lists_replicated_dimensions():
  state = nnx.state(models.abstract_model(models.get_config("tiny-qwen2")))
  # tiny-qwen2: 4 heads, 2 kv heads. tensor=4 keeps the heads sharded and
  # drops it for the kv projections (and their biases) only.
  dropped = sharding.dropped_axes(state, sharding.make_mesh((2, 1, 4)))
  assert dropped == [
      f"['blocks'][{i}]['attn']['{p}'] dim {d} (size 2): tensor=4 dropped"
      for i in (0, 1)
      for p, d in (
          ("k_DKH", 1),
          ("k_bias_KH", 0),
          ("v_DKH", 1),
          ("v_bias_KH", 0),
      )
  ]
  assert sharding.dropped_axes(state, sharding.make_mesh((2, 2, 2))) == []


def test_batch_spans_data_and_fsdp_when_both_divide():
  mesh = sharding.make_mesh((2, 2, 2))
  assert sharding.logical_to_spec(("batch", None), (8, 3), mesh) == P(
      ("data", "fsdp"), None
  )
  # 6 rows: 'data' (2) divides, 'data' x 'fsdp' (4) does not.
  assert sharding.logical_to_spec(("batch", None), (6, 3), mesh) == P(
      "data", None
  )
