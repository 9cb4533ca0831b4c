"""SSB: the pipeline end to end (the loss: tests/methods/ssb_test.py).

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

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


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
        (
            "ssb.py",
            "lambda_kd",
            -1.0,
            r"loss.lambda_kd=-1.0 is invalid for method 'ssb'",
        ),
        (
            "distill.py:topk_cache=x",
            "topk_mode",
            "top1",
            r"loss.topk_mode='top1' is invalid for method 'distill_cache': it"
            r" must be one of \('renormalized', 'tail_bucket', 'sparse_fkl'\)",
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
