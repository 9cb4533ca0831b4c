"""Jobs through `main`: eval end to end; preference pairs from traces."""

import json
import os
import subprocess
import sys

from w2s_jax import jobs, models
from w2s_jax.data import char_vocab, traces
from w2s_jax.jobs import sampling, topk_scoring

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def test_make_pairs_one_per_mixed_prompt():
  recs = [
      traces.SFTRecord("p1", "a", True),
      traces.SFTRecord("p1", "b", False),
      traces.SFTRecord("p1", "c", False),
      traces.SFTRecord("p2", "d", True),  # no negative: no pair
      traces.SFTRecord("p3", "e", False),
      traces.SFTRecord("p3", "f", True),
  ]
  pairs = sampling.make_pairs(recs)
  assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
      ("p1", "a", "b"),
      ("p3", "f", "e"),
  ]


def test_eval_job_through_main(tmp_path):
  tok_dir = str(tmp_path / "tok")
  char_vocab.save_char_tokenizer(tok_dir)
  from w2s_jax.data import tokenizers

  vocab = tokenizers.load_tokenizer(tok_dir).vocab_size
  model = models.init_model(
      models.get_config("tiny-qwen2", vocab_size=vocab, max_len=64)
  )
  models.save_pretrained(model, str(tmp_path / "m"))
  wd = str(tmp_path / "wd")
  cmd = [
      sys.executable,
      "-m",
      "w2s_jax.main",
      (
          f"--config=configs/eval.py:model={tmp_path / 'm'},tokenizer={tok_dir},runlocal,n=2"
      ),
      f"--workdir={wd}",
      "--config.eval.num_problems=8",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
      cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(os.path.join(wd, "eval", "summary.json")))
  items = [json.loads(x) for x in open(os.path.join(wd, "eval", "items.jsonl"))]
  assert summary["num_problems"] == 8 and summary["n"] == 2
  assert len(items) == 8 and all(len(r["completions"]) == 2 for r in items)
  # pass@1 is the mean of per-item correct fractions.
  assert (
      abs(summary["pass@1"] - sum(sum(r["correct"]) / 2 for r in items) / 8)
      < 1e-9
  )


def test_sample_and_rsd_jobs_write_readable_traces(tmp_path):
  from w2s_jax import config_lib

  tok_dir = str(tmp_path / "tok")
  char_vocab.save_char_tokenizer(tok_dir)
  from w2s_jax.data import tokenizers

  vocab = tokenizers.load_tokenizer(tok_dir).vocab_size
  for name, seed in (("t", 0), ("s", 1)):
    m = models.init_model(
        models.get_config("tiny-qwen2", vocab_size=vocab, max_len=64), seed
    )
    models.save_pretrained(m, str(tmp_path / name))
  for rsd in (False, True):
    arg = (
        f"teacher={tmp_path / 't'},student={tmp_path / 's'},tokenizer={tok_dir},runlocal"
    )
    cfg = config_lib.load(
        os.path.join(ROOT, "configs", "sample.py")
        + ":"
        + arg
        + (",rsd" if rsd else "")
    )
    cfg.sample.num_problems = 4
    cfg.sample.require_correct = False
    cfg.sample.max_fallback_rate = 1.0
    wd = str(tmp_path / f"wd{int(rsd)}")
    stats = jobs.run(cfg.job, cfg, wd)
    assert stats["traces"] == 16
    recs = traces.read_sft(os.path.join(wd, "traces.jsonl")).records
    assert len(recs) == stats["kept"] > 0
    assert all(r.correct in (True, False) for r in recs)


def test_topk_scorer_rows_match_the_full_forward():
  """Batched, right-padded scoring == one forward per sequence."""
  import numpy as np

  model = models.init_model(
      models.get_config("tiny-qwen2", vocab_size=24, max_len=16), seed=2
  )
  rng = np.random.RandomState(0)
  seqs = [rng.randint(1, 24, n).astype(np.int32) for n in (5, 9, 3)]
  scorer = topk_scoring.make_topk_scorer(
      model, k=4, temperature=2.0, vocab_size=24
  )
  scored = list(
      topk_scoring.score_sequences(scorer, seqs, batch_size=2, width=10)
  )
  assert len(scored) == 3
  for ids, (top_ids, top_lp) in zip(seqs, scored):
    z = np.asarray(model(ids[None]), np.float64)[0] / 2.0
    lp = z - z.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    assert top_ids.shape == top_lp.shape == (len(ids), 4)
    np.testing.assert_allclose(top_lp, -np.sort(-lp, axis=-1)[:, :4], atol=1e-5)
    np.testing.assert_allclose(
        np.take_along_axis(lp, top_ids, -1), top_lp, atol=1e-5
    )


def test_ssb_data_rejects_bad_settings(tmp_path):
  import pytest

  from w2s_jax import config_lib

  cfg = config_lib.load(
      os.path.join(ROOT, "configs", "ssb.py") + ":runlocal,stage=data"
  )
  cfg.ssb.num_rollouts = 1
  with pytest.raises(ValueError, match=r"ssb.num_rollouts=1 is invalid"):
    jobs.run("ssb_data", cfg, str(tmp_path))
  with pytest.raises(ValueError, match=r"job=.ssb. is unknown.*ssb_data"):
    jobs.run("ssb", cfg, str(tmp_path))


def test_synthetic_trace_grader_notation():
  problem = {"spec": "11:9*0+0"}
  latent = "9*0=0,0+0=0 a0"  # right, in the latent notation
  assert sampling.synthetic_grader("terse")(latent, problem) == (False, None)
  assert sampling.synthetic_grader("terse", "any")(latent, problem) == (
      True,
      "0",
  )
  terse = "A:9*0=0;0+0=5#5"
  assert sampling.synthetic_grader("terse", "any")(terse, problem) == (
      False,
      "5",
  )
