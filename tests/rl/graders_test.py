"""RL graders, their worker processes (light, deadlines) and RL problems."""

import json
import os
import subprocess
import sys
import textwrap
import time

import ml_collections
import numpy as np
import pytest

from w2s_jax import config_lib
from w2s_jax.data import synthetic
from w2s_jax.evals import rewards as rewards_lib
from w2s_jax.evals import worker_pool
from w2s_jax.rl import graders, problems
from w2s_jax.training import inputs

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax")
GRADERS = """
import os
import sys
import time

HEAVY = {heavy!r}


def heavy_modules(completion, gold):
  return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)


def has_marker(completion, gold):
  return "rl_marker_mod" in sys.modules


def hang_after_pid(completion, gold):
  if completion == "hang":
    with open(gold, "w") as f:
      f.write(str(os.getpid()))
    while True:
      pass
  return 1.0
"""
# A parent run as `python -m rl_heavy_main`: its main module imports a
# marker module, as w2s_jax.main imports JAX. Prints what workers loaded.
HEAVY_MAIN = """
import sys

import rl_marker_mod  # noqa: F401

if __name__ == "__main__":
  from rl_graders_mod import has_marker
  from w2s_jax.evals import worker_pool
  from w2s_jax.rl import graders

  light = graders.make_reward_pool(1, 30.0)
  plain = worker_pool.WorkerPool(1, timeout_s=30.0)
  out = [p.map(has_marker, [("", None)])[0].value for p in (light, plain)]
  light.close()
  plain.close()
  print("MARKERS", out[0], out[1])
"""


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
  d = tmp_path_factory.mktemp("graders")
  (d / "rl_graders_mod.py").write_text(GRADERS.format(heavy=HEAVY))
  (d / "rl_marker_mod.py").write_text("MARK = 1\n")
  (d / "rl_heavy_main.py").write_text(textwrap.dedent(HEAVY_MAIN))
  sys.path.insert(0, str(d))
  yield d
  sys.path.remove(str(d))
  for m in ("rl_graders_mod", "rl_marker_mod"):
    sys.modules.pop(m, None)


@pytest.fixture(scope="module")
def pool(mods):
  p = graders.make_reward_pool(2, 1.0, reward_fn="rl_graders_mod:x")
  yield p
  p.close()


def test_modules_import_no_jax_or_flax():
  code = (
      "import sys, w2s_jax.rl.graders, w2s_jax.rl.problems;"
      f" print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY}))"
  )
  out = subprocess.run(
      [sys.executable, "-c", code],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
      timeout=60,
  )
  assert out.stdout.strip() == "[]", out.stdout


def test_workers_load_no_jax_and_never_the_parents_main(mods, pool):
  from rl_graders_mod import heavy_modules  # noqa: PLC0415

  # This process has JAX loaded; its reward workers must not.
  assert "jax" in sys.modules
  (res,) = pool.map(heavy_modules, [("", None)])
  assert res.status == "ok" and res.value == [], res
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(mods), ROOT]))
  out = subprocess.run(
      [sys.executable, "-m", "rl_heavy_main"],
      cwd=str(mods),
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  # A plain spawn pool re-imports `__main__` (and with it the marker, as
  # w2s_jax.main would JAX); the reward pool does not.
  assert "MARKERS False True" in out.stdout, out.stdout


def test_hung_reward_is_killed_at_the_deadline(mods, pool, tmp_path):
  from rl_graders_mod import hang_after_pid  # noqa: PLC0415

  pid_file = str(tmp_path / "pid")
  restarts = pool.stats["restarts"]
  stats = rewards_lib.RewardStats()
  t0 = time.perf_counter()
  r = graders.grade(
      hang_after_pid,
      ["ok", "hang", "ok"],
      ["", pid_file, ""],
      pool=pool,
      timeout_s=0.5,
      stats=stats,
  )
  wall = time.perf_counter() - t0
  np.testing.assert_array_equal(r, [1.0, 0.0, 1.0])
  assert stats.statuses["timeout"] == 1 and stats.failures == 1
  assert 0.5 <= wall < 8.0
  with open(pid_file) as f:
    pid = int(f.read())
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)  # killed and reaped, not left spinning
  assert pool.stats["restarts"] == restarts + 1
  # The replacement grades the next batch.
  r = graders.grade(hang_after_pid, ["ok"] * 3, [""] * 3, pool=pool)
  np.testing.assert_array_equal(r, [1.0, 1.0, 1.0])


def test_synthetic_grader_on_gold_and_wrong_traces():
  task = inputs.task_config(config_lib.train_config("grpo").data)
  for p in synthetic.sample_problems(task, "train", 6, seed=1):
    gold = (p.spec, "terse")
    trace = synthetic.gold_trace(p, "terse")
    assert graders.synthetic_correct(trace, gold) == 1.0
    n = len(str(p.answer))
    wrong = trace[:-n] + str((int(p.answer) + 1) % 11)
    assert graders.synthetic_correct(wrong, gold) == 0.0
    assert graders.has_answer(trace, "synthetic", "terse")
  assert not graders.has_answer("no answer", "synthetic", "terse")


@pytest.mark.parametrize(
    "completion,gold,want",
    [
        ("so #### 42", ("gsm8k", "42"), 1.0),
        ("so #### 41", ("gsm8k", "42"), 0.0),
        (r"thus \boxed{0.5}", ("math", r"\frac{1}{2}"), 1.0),
        (r"thus \boxed{3}", ("math", r"\frac{1}{2}"), 0.0),
    ],
)
def test_math_grader(completion, gold, want):
  assert graders.math_correct(completion, gold) == want


def test_grader_for_picks_the_task_grader():
  assert graders.grader_for("correct", "synthetic") is (
      graders.synthetic_correct
  )
  assert graders.grader_for("ampo", "gsm8k") is graders.math_correct
  assert graders.grader_for("fn", "x", "json:dumps") is json.dumps
  with pytest.raises(ValueError, match=r"rl.reward='bleu': choose one of"):
    graders.grader_for("bleu", "synthetic")
  with pytest.raises(ValueError, match=r"needs rl.reward_fn='module:function'"):
    graders.grader_for("fn", "synthetic", "")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("nocolon", "must be 'package.module:function'"),
        ("no_such_mod_xyz:f", "cannot be imported"),
        ("json:no_such_fn", "cannot be imported"),
        ("__main__:f", "workers cannot import '__main__'"),
    ],
)
def test_bad_reward_fn_spec(spec, match):
  with pytest.raises(ValueError, match=match):
    graders.load_reward_fn(spec)


def test_make_reward_pool_arguments():
  assert graders.make_reward_pool(0, 5.0) is None
  with pytest.raises(ValueError, match=r"rl.reward_workers=-1 must be >= 0"):
    graders.make_reward_pool(-1, 5.0)
  with pytest.raises(ValueError, match=r"rl.reward_timeout_s=0 must be > 0"):
    graders.make_reward_pool(1, 0)


def test_rl_configs_grade_in_workers_by_default():
  for name in ("grpo", "kdrl", "ampo"):
    cfg = config_lib.load(os.path.join(ROOT, f"configs/{name}.py:runlocal"))
    assert int(cfg.rl.reward_workers) == graders.DEFAULT_WORKERS >= 1
    assert float(cfg.rl.reward_timeout_s) > 0


def test_in_process_grading_is_the_same(mods, pool):
  task = inputs.task_config(config_lib.train_config("grpo").data)
  probs = synthetic.sample_problems(task, "train", 8, seed=2)
  texts = [
      synthetic.gold_trace(p, "terse") if i % 3 else "7" * i
      for i, p in enumerate(probs)
  ]
  golds = [(p.spec, "terse") for p in probs]
  fn = graders.synthetic_correct
  want = [fn(t, g) for t, g in zip(texts, golds)]
  in_proc = graders.grade(fn, texts, golds)
  in_pool = graders.grade(fn, texts, golds, pool=pool)
  np.testing.assert_array_equal(in_proc, want)
  np.testing.assert_array_equal(in_pool, want)
  assert isinstance(pool, worker_pool.WorkerPool)


# -- problems -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return inputs.load_tokenizer("char", str(tmp_path_factory.mktemp("tok")))


def _data(**kw):
  return ml_collections.ConfigDict({"prompt_format": "raw", **kw})


def test_jsonl_problems(tok, tmp_path):
  path = tmp_path / "p.jsonl"
  rows = [
      {"question": "1+1?", "answer": "2", "solution": "1+1=2. #### 2"},
      {"prompt": "2+2?", "answer": 4, "solutions": ["a #### 4", "b #### 4"]},
  ]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  probs = problems.build_problems(
      "grpo", _data(source="jsonl", path=str(path)), {}, tok
  )
  assert [p.answer_text for p in probs] == ["2", "4"]
  assert [len(p.solutions) for p in probs] == [1, 2]
  assert probs[1].solution_texts == ("a #### 4", "b #### 4")
  text = tok.decode(probs[0].prompt_ids.tolist(), skip_special_tokens=True)
  assert text == "1+1?"
  for p in probs:
    assert all(s[-1] == tok.eos_id for s in p.solutions)


def test_bad_problem_sources(tok, tmp_path):
  missing = str(tmp_path / "none.jsonl")
  with pytest.raises(FileNotFoundError, match="data.path=.* not found"):
    problems.build_problems(
        "grpo", _data(source="jsonl", path=missing), {}, tok
    )
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"question": "q"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: an RL problem needs"):
    problems.build_problems(
        "grpo", _data(source="jsonl", path=str(bad)), {}, tok
    )
  with pytest.raises(ValueError, match=r"data.source='hf' cannot feed an RL"):
    problems.build_problems("grpo", _data(source="hf"), {}, tok)
  with pytest.raises(ValueError, match="the RL task has no prompts"):
    problems.PromptSource([], 0)
