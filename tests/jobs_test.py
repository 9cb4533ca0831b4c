"""Jobs through `main`: eval end to end; preference pairs from traces."""

import json
import os
import subprocess
import sys

from w2s_jax import jobs, models
from w2s_jax.data import char_vocab, traces

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_make_pairs_one_per_mixed_prompt():
  recs = [
      traces.SFTRecord("p1", "a", True),
      traces.SFTRecord("p1", "b", False),
      traces.SFTRecord("p1", "c", False),
      traces.SFTRecord("p2", "d", True),  # no negative: no pair
      traces.SFTRecord("p3", "e", False),
      traces.SFTRecord("p3", "f", True),
  ]
  pairs = jobs.make_pairs(recs)
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
