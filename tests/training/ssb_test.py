"""SSB: the loss is T²·FKL at T on the reply rows, and the pipeline end to end.

The end-to-end test checks the cache the `ssb_data` job writes against an
independent forward pass of the base model on ``hinted prompt || reply``:
student row p_s − 1 + i holds the teacher's distribution for reply token i.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import config_lib, main, models
from w2s_jax.data import formatting, topk_cache
from w2s_jax.data import tokenizers as tokenizers_lib
from w2s_jax.training import steps

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
V, L, B, P = 24, 10, 3, 4  # P prompt tokens; the reply is the rest


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _setup(seed=0):
  cfg = models.get_config("tiny-qwen2", vocab_size=V, max_len=L)
  model = models.init_model(cfg, seed=seed)
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, V, (B, L)).astype(np.int32)
  mb = {
      "tokens": jnp.asarray(tokens),
      "positions": jnp.asarray(np.tile(np.arange(L), (B, 1)), jnp.int32),
      "segment_ids": jnp.ones((B, L), jnp.int32),
      "completion_mask": jnp.asarray(
          np.tile(np.arange(L) >= P, (B, 1)), jnp.int32
      ),
  }
  logits = np.asarray(model(mb["tokens"]), np.float64)
  return model, mb, tokens, logits


def _with_cache(mb, lp_t):
  """Cache with k = V from teacher log-probs [B, L, V]; garbage off M."""
  ids = np.argsort(-lp_t, axis=-1).astype(np.int32)
  lps = np.take_along_axis(lp_t, ids, -1).astype(np.float32)
  lps[:, : P - 1] = -np.inf  # prompt rows: never read
  return {
      **mb,
      "teacher_topk_ids": jnp.asarray(ids),
      "teacher_topk_logprobs": jnp.asarray(lps),
  }


def _loss(model, mb, **cfg):
  norms = steps._token_norm(mb, {})
  base = {"temperature": 2.0, "teacher_temperature": 2.0, "chunk_size": 8}
  return steps.ssb_loss(model, {}, mb, norms, {**base, **cfg})


@pytest.mark.parametrize("lambda_ce", [0.0, 0.3])
def test_ssb_loss_is_t2_fkl_at_t_plus_ce(lambda_ce):
  model, mb, tokens, zs = _setup()
  tau = 2.0
  zt = np.random.RandomState(1).randn(B, L, V) * 3
  lp_t = _log_softmax(zt / tau)
  loss, metrics = _loss(
      model,
      _with_cache(mb, lp_t),
      topk_mode="renormalized",
      lambda_ce=lambda_ce,
  )
  # Reference in float64: rows P-1 .. L-2 predict the reply tokens P .. L-1.
  lq = _log_softmax(zs / tau)
  rows = slice(P - 1, L - 1)
  kl = (np.exp(lp_t) * (lp_t - lq)).sum(-1)[:, rows]
  ce = -np.take_along_axis(_log_softmax(zs)[:, :-1], tokens[:, 1:, None], -1)[
      ..., 0
  ][:, rows]
  want = tau**2 * kl.mean() + lambda_ce * ce.mean()
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics["ssb/fkl"]) == pytest.approx(kl.mean(), rel=1e-5)
  assert float(metrics["ssb/num_tokens"]) == B * (L - P)


@pytest.mark.parametrize("mode", ["renormalized", "tail_bucket"])
def test_ssb_loss_is_zero_when_teacher_matches_student_on_m(mode):
  model, mb, _, zs = _setup()
  lp_t = _log_softmax(zs / 2.0)
  loss, _ = _loss(model, _with_cache(mb, lp_t), topk_mode=mode)
  assert abs(float(loss)) < 1e-5
  # A different teacher gives a clearly positive loss.
  other, _ = _loss(
      model, _with_cache(mb, _log_softmax(zs[::-1] / 2.0)), topk_mode=mode
  )
  assert float(other) > 1e-2


def _tiny(c, steps_, **over):
  c.student.overrides.d_model = 64
  c.student.overrides.num_layers = 2
  c.student.overrides.mlp_dim = 128
  c.train.tensorboard = False
  c.train.steps = steps_
  c.train.save_every = steps_
  for key, value in over.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.slow
def test_ssb_pipeline_end_to_end(tmp_path):
  # A base model that is right some of the time: brief SFT on the task.
  sft = _tiny(
      config_lib.load(os.path.join(ROOT, "configs/sft.py:runlocal")),
      100,
      **{
          "data.modulus": 7,
          "data.steps": 1,
          "data.num_examples": 64,
          "optim.lr": 1e-2,
      },
  )
  main.run_job(sft, str(tmp_path / "sft"))
  base = str(tmp_path / "sft" / "export")
  data_cfg = config_lib.load(
      os.path.join(ROOT, f"configs/ssb.py:runlocal,stage=data,base={base}")
  )
  data_cfg.ssb.modulus, data_cfg.ssb.steps = 7, 1
  stats = main.run_job(data_cfg, str(tmp_path / "data"))
  assert 0 < stats["kept"] <= stats["mixed"] <= stats["problems"]
  rows = [json.loads(x) for x in open(tmp_path / "data" / "ssb.jsonl")]
  assert len(rows) == stats["kept"]

  # Every cached reply row equals the base model's own top-k at T = 2 on the
  # hinted prompt followed by the reply.
  tok = tokenizers_lib.load_tokenizer(str(tmp_path / "data" / "tokenizer"))
  model = models.load_pretrained(base)
  reader = topk_cache.TopKCacheReader(tmp_path / "data" / "topk.array_record")
  assert reader.header.temperature == 2.0 and len(reader) == len(rows)
  for row, ex in zip(rows, reader.read_many(range(len(reader)))):
    p_s = ex.prompt_length
    assert tok.decode(ex.token_ids[:p_s].tolist()).endswith(row["prompt"])
    hint = formatting.encode_prompt(tok, row["hinted_prompt"], "raw")
    reply = ex.token_ids[p_s:]
    seq = np.concatenate([hint, reply])[None]
    lp = _log_softmax(np.asarray(model(jnp.asarray(seq)), np.float64) / 2.0)[0]
    for i in range(len(reply)):
      t_row, s_row = len(hint) - 1 + i, p_s - 1 + i
      np.testing.assert_allclose(
          ex.topk_logprobs[s_row],
          np.take_along_axis(lp[t_row], ex.topk_ids[s_row], -1),
          atol=1e-4,
      )
      np.testing.assert_allclose(
          ex.topk_logprobs[s_row, 0], lp[t_row].max(), atol=1e-4
      )

  train = _tiny(
      config_lib.load(
          os.path.join(
              ROOT,
              f"configs/ssb.py:runlocal,base={base},data_dir={tmp_path / 'data'}",
          )
      ),
      2,
      **{"train.batch_size": 1},
  )
  assert train.method == "ssb" and train.lora.rank > 0
  result = main.run_job(train, str(tmp_path / "train"))
  assert np.isfinite(result["train/loss"]) and result["ssb/num_tokens"] > 0


@pytest.mark.parametrize(
    "spec,key,value,msg",
    [
        ("ssb.py", "lambda_kd", -1.0, r"loss.lambda_kd=-1.0 is invalid"),
        (
            "distill.py:topk_cache=x",
            "topk_mode",
            "top1",
            r"loss.topk_mode='top1' is invalid: it must be 'tail_bucket'",
        ),
    ],
)
def test_offline_method_settings_fail_at_job_start(
    tmp_path, spec, key, value, msg
):
  from w2s_jax.training import trainer

  cfg = config_lib.load(os.path.join(ROOT, "configs", spec))
  cfg.loss[key] = value
  with pytest.raises(ValueError, match=msg):
    trainer.train_and_evaluate(cfg, str(tmp_path))
