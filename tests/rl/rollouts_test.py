"""Rollouts: batch layout, grading failures, dynamic sampling, AMPO, GKD λ."""

import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from flax import nnx

from w2s_jax import config_lib
from w2s_jax.decoding import sampler as sampler_lib
from w2s_jax.evals import rewards as rewards_lib
from w2s_jax.models import config as model_config
from w2s_jax.models import transformer
from w2s_jax.rl import graders, rollouts
from w2s_jax.rl import problems as rl_problems
from w2s_jax.training import inputs

REWARD_MODULE = """
import time


def has_seven(completion, gold):
  return 1.0 if "7" in completion else 0.0


def flaky(completion, gold):
  if "9" in completion:
    raise RuntimeError("grader bug")
  if "8" in completion:
    while True:  # a hung grader: only a kill stops it
      time.sleep(0.01)
  return 1.0 if "7" in completion else 0.0
"""
T = 24  # new tokens: the longest gold solution of the tests fits


@pytest.fixture(scope="module")
def reward_module(tmp_path_factory):
  d = tmp_path_factory.mktemp("rewards")
  (d / "rl_test_rewards.py").write_text(textwrap.dedent(REWARD_MODULE))
  sys.path.insert(0, str(d))
  yield "rl_test_rewards"
  sys.path.remove(str(d))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return inputs.load_tokenizer("char", str(tmp_path_factory.mktemp("tok")))


def _problems(tok, n=8, styles=""):
  c = config_lib.train_config("grpo")
  c.data.num_examples = n
  rl = {"ampo_styles": styles}
  return rl_problems.build_problems("grpo", c.data, rl, tok)


def _roller(tok, problems, **kw):
  cfg = rollouts.RolloutConfig(**{"max_new_tokens": T, **kw})
  mcfg = model_config.get_config(
      "tiny-qwen2", d_model=16, num_layers=1, vocab_size=tok.vocab_size
  )
  graphdef, _ = nnx.split(transformer.abstract_model(mcfg))
  return rollouts.Roller(
      cfg, tok, rl_problems.PromptSource(problems, 0), graphdef, mcfg
  )


def _fake_sampler(tok, texts_per_call):
  """Returns canned completions, one list of texts per call."""
  calls = iter(texts_per_call)

  def fn(params, tokens_BP, seg_BP, key):
    del params, seg_BP, key
    texts = next(calls)
    t = T
    out = np.zeros((len(texts), t), np.int32)
    lens = np.zeros(len(texts), np.int32)
    for i, s in enumerate(texts):
      ids = tok.encode(s)[: t - 1] + [tok.eos_id]
      out[i, : len(ids)], lens[i] = ids, len(ids)
    assert len(texts) % tokens_BP.shape[0] == 0
    return sampler_lib.SamplerOutput(
        tokens_BT=out,
        lengths_B=lens,
        logprobs_BT=np.zeros(out.shape, np.float32),
        sampling_logprobs_BT=np.zeros(out.shape, np.float32),
        finish_B=np.full(len(texts), sampler_lib.FINISH_EOS),
    )

  return fn


def test_assemble_layout():
  prompt = np.array([[0, 5, 6], [7, 8, 9]], np.int32)
  seg = np.array([[0, 1, 1], [1, 1, 1]], np.int32)
  comp = np.array([[10, 2, 3], [11, 12, 2]], np.int32)
  b = rollouts._assemble(prompt, seg, comp, np.array([2, 3]))  # noqa: SLF001
  np.testing.assert_array_equal(
      b["tokens"], [[0, 5, 6, 10, 2, 0], [7, 8, 9, 11, 12, 2]]
  )
  np.testing.assert_array_equal(
      b["segment_ids"], [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
  )
  np.testing.assert_array_equal(
      b["positions"], [[0, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5]]
  )
  np.testing.assert_array_equal(
      b["completion_mask"], [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
  )


def test_prompt_source_is_deterministic_and_resumable(tok):
  problems = _problems(tok, 5)
  a = rl_problems.PromptSource(problems, 3)
  first = [id(p) for p in a.take(7)]
  state = a.get_state()
  rest = [id(p) for p in a.take(6)]
  b = rl_problems.PromptSource(problems, 3)
  assert [id(p) for p in b.take(7)] == first
  b.set_state(state)
  assert [id(p) for p in b.take(6)] == rest
  assert sorted(first[:5]) == sorted(id(p) for p in problems)  # an epoch


def test_synthetic_problems_grade_their_gold_solutions(tok):
  problems = _problems(tok, 4, styles="postfix,running")
  r = _roller(tok, problems, group_size=1, std_normalize=False)
  for p in problems:
    assert len(p.solutions) == 3
    assert p.solutions[0][-1] == tok.eos_id
    texts = list(p.solution_texts)
    rew, ok = r.grade([p] * 3, texts, np.array([5, 5, 5]), None)
    assert ok.tolist() == [True] * 3  # every style states the answer
    n = len(p.answer_text)
    wrong = texts[0][:-n] + str((int(p.answer_text) + 1) % 11)
    _, ok = r.grade([p], [wrong], np.array([5]), None)
    assert not ok[0]


@pytest.fixture(scope="module")
def reward_pool(reward_module):
  # The default of the RL configs: graders in worker processes.
  pool = graders.make_reward_pool(2, 1.0, reward_fn=f"{reward_module}:flaky")
  yield pool
  pool.close()


@pytest.mark.parametrize("workers", [True, False])
def test_reward_fn_that_raises_counts_as_wrong(
    tok, reward_module, reward_pool, workers
):
  problems = _problems(tok, 2)
  r = _roller(tok, problems, reward="fn", reward_fn=f"{reward_module}:flaky")
  r.pool = reward_pool if workers else None
  stats = rewards_lib.RewardStats()
  rew, ok = r.grade(problems[:1], ["77", "79", "1"], np.array([2, 2, 1]), stats)
  np.testing.assert_array_equal(rew, [1.0, 0.0, 0.0])
  assert ok.tolist() == [True, False, False]
  assert stats.failures == 1 and stats.statuses["error"] == 1


def test_hung_reward_fn_is_killed_and_the_run_continues(
    tok, reward_module, reward_pool
):
  problems = _problems(tok, 8)
  r = _roller(
      tok,
      problems,
      group_size=2,
      prompts_per_step=2,
      reward="fn",
      reward_fn=f"{reward_module}:flaky",
      reward_timeout_s=1.0,
  )
  r.pool = reward_pool
  restarts = reward_pool.stats["restarts"]
  # Step 0: one hung grader ("87"), one raising ("9"); step 1: all fine.
  calls = [["87", "7", "9", "1"], ["7", "1", "77", "1"]]
  r._sample_g = _fake_sampler(tok, calls)  # noqa: SLF001
  t0 = time.perf_counter()
  _, m0, timings = r.policy_batch(None, 0, jax.random.key(0))
  wall = time.perf_counter() - t0
  # Killed at the 1 s deadline, not after the grader's (endless) run.
  assert 1.0 <= timings["grade"] < 10.0 and wall < 15.0
  assert reward_pool.stats["restarts"] == restarts + 1
  assert m0["reward/failures"] == 2
  np.testing.assert_allclose(m0["rollout/accuracy"], 1 / 4)
  _, m1, _ = r.policy_batch(None, 1, jax.random.key(1))
  assert m1["reward/failures"] == 0
  np.testing.assert_allclose(m1["rollout/accuracy"], 2 / 4)


def test_bad_reward_fn_spec_is_a_clear_error(tok):
  with pytest.raises(ValueError, match="must be 'package.module:function'"):
    _roller(tok, _problems(tok, 2), reward="fn", reward_fn="nocolon")
  with pytest.raises(ValueError, match="cannot be imported"):
    _roller(tok, _problems(tok, 2), reward="fn", reward_fn="no_such_mod:f")


def test_dynamic_sampling_drops_constant_groups_and_fills(tok, reward_module):
  problems = _problems(tok, 8)
  kw = dict(
      group_size=2,
      prompts_per_step=3,
      reward="fn",
      reward_fn=f"{reward_module}:has_seven",
      dynamic_sampling=True,
  )
  # Batch 1: groups (7,7) all right, (7,1) mixed, (1,1) all wrong.
  # Batch 2: (1,7) mixed, (7,7), (2,7) mixed  -> 3 mixed groups kept.
  calls = [["7", "7", "7", "1", "1", "1"], ["1", "7", "7", "7", "2", "7"]]
  r = _roller(tok, problems, max_resample_batches=5, **kw)
  r._sample_g = _fake_sampler(tok, calls)  # noqa: SLF001
  batch, m, _ = r.policy_batch(None, 0, jax.random.key(0))
  assert r.sampler_calls == 2 and m["rollout/sample_batches"] == 2
  adv = batch["advantages"].reshape(3, 2)
  assert np.all(np.abs(adv).sum(-1) > 0)  # no zero-advantage group
  np.testing.assert_allclose(adv.sum(-1), 0.0, atol=1e-6)
  assert m["rollout/valid_group_frac"] == 1.0
  # No resampling budget: the missing groups are masked-out fillers.
  r = _roller(tok, problems, max_resample_batches=0, **kw)
  r._sample_g = _fake_sampler(tok, calls[:1])  # noqa: SLF001
  batch, m, _ = r.policy_batch(None, 0, jax.random.key(0))
  assert r.sampler_calls == 1
  mask = batch["completion_mask"].reshape(3, 2, -1)
  assert mask[0].sum() > 0 and mask[1:].sum() == 0
  assert np.all(batch["advantages"].reshape(3, 2)[1:] == 0)
  np.testing.assert_allclose(m["rollout/valid_group_frac"], 1 / 3)


def test_ampo_injects_only_on_total_failure_and_keeps_group_size(tok):
  problems = _problems(tok, 8, styles="postfix,running")
  g = 4
  r = _roller(
      tok, problems, group_size=g, prompts_per_step=3, reward="ampo",
      std_normalize=False, ampo=True,
  )  # fmt: skip
  taken = problems[:3]
  wrong = "A:1#" + str((int(taken[0].answer_text) + 1) % 11)
  right = [p.solution_texts[0] for p in taken]
  # Group 0: one right; groups 1, 2: all wrong.
  texts = [right[0], wrong, wrong, wrong] + ["A:"] * 4 + ["Q"] * 4
  r._sample_g = _fake_sampler(tok, [texts])  # noqa: SLF001
  r.source = rl_problems.PromptSource(taken, 0)
  r.source.take = lambda n: list(taken)
  teacher_p = np.array([0.2, 0.9, 0.5])  # teacher 1 best, then 2

  def logprob_fn(params, rows):
    del params
    n = rows["tokens"].shape[0]
    lp = np.log(np.repeat(teacher_p[None], n // 3, 0).reshape(n, 1))
    return np.broadcast_to(lp, (n, rows["tokens"].shape[1] - 1))

  r.logprob_fn = logprob_fn
  batch, m, _ = r.policy_batch(None, 0, jax.random.key(1))
  off = batch["off_policy"].reshape(3, g)
  assert off.shape == (3, g)  # group size kept
  assert off[0].sum() == 0  # a correct rollout: never inject
  assert off[1].sum() == 2 and off[2].sum() == 2  # min(2, teachers)
  assert m["ampo/groups_guided"] == 2
  toks = batch["tokens"].reshape(3, g, -1)[..., r.width :]
  for grp in (1, 2):
    injected = sorted(
        tok.decode(row[row != 0].tolist(), skip_special_tokens=True)
        for row in toks[grp][off[grp] != 0]
    )
    want = sorted(taken[grp].solution_texts[k] for k in (1, 2))
    assert injected == want
  assert np.all(batch["correct"].reshape(3, g)[off != 0] == 1)
  adv = batch["advantages"].reshape(3, g)
  np.testing.assert_allclose(adv.sum(-1), 0.0, atol=1e-6)
  assert np.all(adv[off != 0] > 0)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_gkd_lambda_zero_draws_no_student_samples(tok, lam):
  c = config_lib.train_config("gkd")
  c.data.num_examples = 8
  problems = rl_problems.build_problems("gkd", c.data, {}, tok)
  r = _roller(tok, problems, prompts_per_step=2)
  r._sample_1 = _fake_sampler(tok, [["7", "7"]] * 5)  # noqa: SLF001
  on = []
  for step in range(5):
    batch, m, _ = r.gkd_batch(None, step, jax.random.key(step), lam)
    on.append(m["gkd/on_policy"])
    assert batch["tokens"].shape == (2, r.width + T)
  assert r.sampler_calls == (0 if lam == 0 else 5)
  assert on == [lam] * 5
  if lam == 0:  # dataset completions: the gold traces, EOS included
    comp = batch["tokens"][:, r.width :]
    mask = batch["completion_mask"][:, r.width :] != 0
    assert np.all(comp[mask][-1:] == tok.eos_id)
