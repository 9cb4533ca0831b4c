"""Host side of one RL step: prompts -> samples -> rewards -> a padded batch.

``Roller.policy_batch`` (GRPO / Dr.GRPO / DAPO / KDRL / AMPO):

1. take N prompts from a resumable ``PromptSource``;
2. sample G completions per prompt with the jitted sampler on the CURRENT
   student state (the trainer's device arrays, no host copy of weights);
3. decode and grade on the host with ``graders.grade`` (in the worker
   processes of ``graders.make_reward_pool``, a deadline per completion,
   when a pool is given), so a grader that raises or times out scores the
   sample as wrong, is counted (``reward/failure_frac``) and the run
   continues;
4. shape: DAPO overlong penalty; DAPO dynamic sampling (drop groups whose
   accuracy is all 0 or all 1, resample up to ``max_resample_batches`` more
   batches, then fill with masked-out groups so shapes stay static); AMPO
   guidance (teacher solutions replace failed rollouts only when a group has
   no correct rollout, ranked by the current student's comprehension score,
   group size kept);
5. group advantages (with or without std) and a padded numpy batch with the
   keys documented in ``rl.scoring``.

``Roller.gkd_batch``: with probability λ the completions are student samples
(no gradient), else the dataset's (gold traces); λ = 0 never calls the
sampler (``sampler_calls`` counts the calls).

Rows are ``[left-padded prompt (P) | completion (T)]``, so every batch of a
run has the same shape ``[B, P + T]`` and the jitted steps compile once.

Legend: N prompts, G group size, B = N·G rows, P prompt width, T new tokens,
R teacher solutions per prompt.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from w2s_jax import losses
from w2s_jax.decoding import sampler as sampler_lib
from w2s_jax.decoding import sampling_params as sp_lib
from w2s_jax.evals import rewards as rewards_lib
from w2s_jax.rl import graders
from w2s_jax.rl import multiprocess as mp
from w2s_jax.rl.problems import Problem, PromptSource


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Static settings of the rollouts (from ``config.rl``)."""

  group_size: int = 8
  prompts_per_step: int = 8
  max_new_tokens: int = 32
  temperature: float = 1.0
  top_p: float = 1.0
  std_normalize: bool = True
  eps: float = 1e-6
  dynamic_sampling: bool = False
  max_resample_batches: int = 10
  overlong_buffer: int = 0
  overlong_factor: float = 1.0
  reward: str = "correct"
  reward_fn: str = ""
  reward_timeout_s: float = 5.0
  correct_reward: float = 1.0
  wrong_reward: float = 0.0
  task: str = "synthetic"
  style: str = "terse"
  ampo: bool = False
  ampo_max_teachers: int = 2
  seed: int = 0
  # Sampling copy of the policy: '' = the trainer's weights as they are,
  # else a dtype ('bfloat16', ...) the weights are cast to for sampling.
  sample_dtype: str = ""
  # Which sampler log-probs are π_sample: 'raw' (temperature 1, the full
  # vocabulary), 'sampling' (the distribution sampled from) or '' (none).
  sampler_logprobs: str = "raw"


def _assemble(prompt_BP, seg_BP, comp_BT, lengths_B) -> dict[str, np.ndarray]:
  """Rows [prompt | completion]: tokens, positions, segments, mask."""
  t = comp_BT.shape[1]
  comp_mask = (np.arange(t)[None, :] < lengths_B[:, None]).astype(np.int32)
  seg = np.concatenate([seg_BP, comp_mask], axis=1).astype(np.int32)
  pos = np.maximum(np.cumsum(seg != 0, axis=1) - 1, 0) * (seg != 0)
  comp_BT = np.where(comp_mask != 0, comp_BT, 0)
  return {
      "tokens": np.concatenate([prompt_BP, comp_BT], axis=1).astype(np.int32),
      "positions": pos.astype(np.int32),
      "segment_ids": seg,
      "completion_mask": (
          np.concatenate([np.zeros_like(seg_BP), comp_mask], axis=1).astype(
              np.int32
          )
      ),
  }


def _target_aligned(lp_BT: np.ndarray, width: int, length: int) -> np.ndarray:
  """Completion log-probs [B, T] at the target-aligned columns [B, L-1]:
  column t refers to token t + 1, so completion token j is column P - 1 + j.
  """
  out = np.zeros((lp_BT.shape[0], length - 1), np.float32)
  out[:, width - 1 : width - 1 + lp_BT.shape[1]] = lp_BT
  return out


def _pad_solution(ids: np.ndarray, t: int) -> tuple[np.ndarray, int]:
  row = np.zeros(t, np.int32)
  n = min(len(ids), t)
  row[:n] = ids[:n]
  return row, n


class Roller:
  """Produces the host batch of one RL step (see the module docstring).

  Args:
    cfg: rollout settings.
    tokenizer: the shared tokenizer.
    source: the prompts.
    graphdef, model_cfg: the student's graph and ``TransformerConfig``.
    mesh: batches are sharded over it (None: default device).
    pool: reward workers from ``graders.make_reward_pool`` (None:
      graders run in-process, no deadline).
    logprob_fn: jitted ``(params, batch) -> [B, L-1]`` student log-probs
      (AMPO's comprehension score).
    vocab_size: sample from this many logits (padded embeddings).
  """

  def __init__(
      self,
      cfg: RolloutConfig,
      tokenizer,
      source: PromptSource,
      graphdef,
      model_cfg,
      *,
      mesh=None,
      pool=None,
      logprob_fn: Callable | None = None,
      vocab_size: int | None = None,
  ):
    self.cfg, self.tok, self.source = cfg, tokenizer, source
    self.mesh, self.pool, self.logprob_fn = mesh, pool, logprob_fn
    self.pad = int(tokenizer.pad_id or 0)
    self.width = max(len(p.prompt_ids) for p in source.problems)
    self.grader = graders.grader_for(cfg.reward, cfg.task, cfg.reward_fn)
    sampler_lib.check_prompt_shape(model_cfg, self.width, cfg.max_new_tokens)
    params = sp_lib.SamplingParams(cfg.temperature, 0, cfg.top_p)

    def make(n):
      dcfg = sampler_lib.DecodeConfig(
          max_new_tokens=cfg.max_new_tokens,
          params=params,
          n=n,
          eos_ids=tuple(tokenizer.eos_ids),
          pad_id=self.pad,
          vocab_size=vocab_size,
      )
      return sampler_lib.make_sampler(graphdef, model_cfg, dcfg)

    self._sample_g = make(cfg.group_size)
    self._sample_1 = make(1)
    self._cast = None
    if cfg.sample_dtype:
      dt = jax.numpy.dtype(cfg.sample_dtype)
      self._cast = jax.jit(
          lambda p: jax.tree.map(
              lambda x: (
                  x.astype(dt)
                  if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
                  else x
              ),
              p,
          )
      )
    self.sampler_calls = 0
    self.last_score_s = 0.0

  # -- device helpers -------------------------------------------------------

  def put(self, x: np.ndarray) -> jax.Array:
    """A host array (equal on every process) on the mesh, rows on the batch
    axes."""
    return mp.put(x, self.mesh)

  def _prompts(self, problems: Sequence[Problem]):
    n = len(problems)
    tokens = np.full((n, self.width), self.pad, np.int32)
    seg = np.zeros((n, self.width), np.int32)
    for i, p in enumerate(problems):
      k = len(p.prompt_ids)
      tokens[i, self.width - k :] = p.prompt_ids
      seg[i, self.width - k :] = 1
    return tokens, seg

  def sample(self, params, problems, key, n: int):
    """(prompt_BP, seg_BP, tokens_BT, lengths_B, finish_B, logprobs_BT) as
    numpy; prompt rows repeated n times (row b·n + j is sample j of prompt
    b). ``logprobs_BT`` are the sampler's log-probs of its tokens (π_sample
    of the importance correction, ``cfg.sampler_logprobs``); the sampler runs
    on a ``cfg.sample_dtype`` copy of ``params`` when that is set."""
    tokens, seg = self._prompts(problems)
    fn = self._sample_g if n == self.cfg.group_size else self._sample_1
    if n not in (1, self.cfg.group_size):
      raise ValueError(f"n={n} must be 1 or rl.group_size.")
    self.sampler_calls += 1
    if self._cast is not None:
      params = self._cast(params)
    key = mp.replicate_key(key, self.mesh)
    out = fn(params, self.put(tokens), self.put(seg), key)
    lp = (
        out.logprobs_BT
        if self.cfg.sampler_logprobs == "raw"
        else out.sampling_logprobs_BT
    )
    toks, lens, fin, lp = mp.fetch(
        (out.tokens_BT, out.lengths_B, out.finish_B, lp)
    )
    rep = lambda x: np.repeat(x, n, axis=0)  # noqa: E731
    return (
        rep(tokens),
        rep(seg),
        np.asarray(toks),
        np.asarray(lens),
        fin,
        np.asarray(lp, np.float32),
    )

  # -- grading --------------------------------------------------------------

  def _golds(self, problems, n):
    c = self.cfg
    golds = []
    for p in problems:
      if c.task == "synthetic" and c.reward != "fn":
        g = (p.gold, c.style)
      elif c.reward != "fn":
        g = (c.task, p.answer_text)
      else:
        g = p.gold
      golds += [g] * n
    return golds

  def grade(self, problems, texts, lengths, stats):
    """(rewards_B f32, correct_B bool) for texts of n per problem."""
    c = self.cfg
    golds = self._golds(problems, len(texts) // len(problems))
    acc = graders.grade(
        self.grader,
        texts,
        golds,
        pool=self.pool,
        timeout_s=c.reward_timeout_s if self.pool is not None else None,
        stats=stats,
    )
    correct = acc > 0
    if c.reward == "fn":
      return acc.astype(np.float32), correct
    if c.reward == "correct":
      r = np.where(correct, c.correct_reward, c.wrong_reward)
      return r.astype(np.float32), correct
    fmt = np.array([graders.has_answer(t, c.task, c.style) for t in texts])
    if c.reward == "ampo":  # r = 0.9·acc + 0.1·format; correct iff r > 0.6
      r = 0.9 * correct + 0.1 * fmt
      return r.astype(np.float32), r > 0.6
    r_len = rewards_lib.length_reward(lengths, c.max_new_tokens)
    variant = "code" if c.reward == "surrogate" else "format_only"
    r = rewards_lib.combine_surrogate(fmt, np.zeros(len(texts)), r_len, variant)
    return r.astype(np.float32), correct

  def _decode(self, tokens_BT, lengths_B) -> list[str]:
    return [
        self.tok.decode(r[:n].tolist(), skip_special_tokens=True)
        for r, n in zip(tokens_BT, lengths_B)
    ]

  # -- GRPO family ----------------------------------------------------------

  def policy_batch(self, params, step: int, key: jax.Array):
    """The batch of one GRPO/KDRL/AMPO step.

    Returns:
      (batch, metrics, timings): numpy arrays (keys of ``rl.scoring`` minus the
      scored log-probs and ``kd_beta``), host metrics, seconds per phase
      ('sample', 'grade', 'host').
    """
    c, g, n_want = self.cfg, self.cfg.group_size, self.cfg.prompts_per_step
    timings = {"sample": 0.0, "grade": 0.0, "host": 0.0}
    stats = rewards_lib.RewardStats()
    kept: list[dict[str, np.ndarray]] = []
    dropped: list[dict[str, np.ndarray]] = []
    raw_rewards, raw_correct, raw_len, raw_trunc = [], [], [], []
    rounds = 0
    while True:
      problems = self.source.take(n_want)
      t0 = time.perf_counter()
      p_BP, s_BP, tok_BT, len_B, fin_B, slp_BT = self.sample(
          params, problems, jax.random.fold_in(key, rounds), g
      )
      t1 = time.perf_counter()
      r_B, ok_B = self._grade_shard(problems, tok_BT, len_B, stats)
      t2 = time.perf_counter()
      timings["sample"] += t1 - t0
      timings["grade"] += t2 - t1
      raw_rewards.append(r_B)
      raw_correct.append(ok_B)
      raw_len.append(len_B)
      raw_trunc.append(fin_B == sampler_lib.FINISH_LENGTH)
      if c.overlong_buffer > 0:
        r_B = r_B + np.asarray(
            losses.overlong_penalty(
                len_B,
                max_len=c.max_new_tokens,
                buffer_len=c.overlong_buffer,
                factor=c.overlong_factor,
            )
        )
      group = {
          "prompt": p_BP.reshape(n_want, g, -1),
          "seg": s_BP.reshape(n_want, g, -1),
          "tokens": tok_BT.reshape(n_want, g, -1),
          "slp": slp_BT.reshape(n_want, g, -1),
          "lengths": len_B.reshape(n_want, g),
          "rewards": r_B.reshape(n_want, g),
          "correct": ok_B.reshape(n_want, g),
          "problem": np.array(problems, dtype=object),
      }
      if not c.dynamic_sampling:
        kept.append(group)
        break
      keep = np.asarray(losses.dynamic_sampling_filter(group["correct"]))
      kept.append({k: v[keep] for k, v in group.items()})
      dropped.append({k: v[~keep] for k, v in group.items()})
      rounds += 1
      have = sum(len(x["lengths"]) for x in kept)
      if have >= n_want or rounds > c.max_resample_batches:
        break
    t3 = time.perf_counter()
    cat = {k: np.concatenate([x[k] for x in kept]) for k in kept[0]}
    n_kept = len(cat["lengths"])
    valid_N = np.ones(n_kept, bool)
    if n_kept < n_want:  # fill with masked-out groups: static shapes
      fill = {k: np.concatenate([x[k] for x in dropped]) for k in dropped[0]}
      need = n_want - n_kept
      cat = {k: np.concatenate([cat[k], fill[k][:need]]) for k in cat}
      valid_N = np.concatenate([valid_N, np.zeros(need, bool)])
    cat = {k: v[:n_want] for k, v in cat.items()}
    valid_N = valid_N[:n_want]
    off_NG = np.zeros((n_want, g), bool)
    metrics: dict[str, float] = {}
    self.last_score_s = 0.0
    if c.ampo:
      self._inject(params, cat, off_NG, key, metrics)
    t4 = time.perf_counter()
    adv_NG = np.asarray(
        losses.group_advantages(
            cat["rewards"], normalize_std=c.std_normalize, eps=c.eps
        )
    )
    b = n_want * g
    batch = _assemble(
        cat["prompt"].reshape(b, -1),
        cat["seg"].reshape(b, -1),
        cat["tokens"].reshape(b, -1),
        cat["lengths"].reshape(b),
    )
    row_valid = np.repeat(valid_N, g)
    batch["completion_mask"] *= row_valid[:, None].astype(np.int32)
    batch["advantages"] = (adv_NG.reshape(b) * row_valid).astype(np.float32)
    batch["correct"] = cat["correct"].reshape(b).astype(np.float32)
    batch["off_policy"] = off_NG.reshape(b).astype(np.float32)
    if c.sampler_logprobs:
      batch["sample_logprobs"] = _target_aligned(
          cat["slp"].reshape(b, -1), self.width, batch["tokens"].shape[1]
      )
    t5 = time.perf_counter()
    # The comprehension forward is device time; the rest of AMPO is host.
    timings["score"] = self.last_score_s
    timings["host"] += (t3 - t2) + (t5 - t4) + (t4 - t3 - self.last_score_s)
    stats = mp.merge_reward_stats(stats)
    rr, cc = np.concatenate(raw_rewards), np.concatenate(raw_correct)
    metrics.update({
        "rollout/reward_mean": float(rr.mean()),
        "rollout/reward_std": float(rr.std()),
        "rollout/accuracy": float(cc.mean()),
        "rollout/response_length": float(np.concatenate(raw_len).mean()),
        "rollout/truncated_frac": float(np.concatenate(raw_trunc).mean()),
        "rollout/batch_reward_mean": float(cat["rewards"].mean()),
        "rollout/adv_abs_mean": float(np.abs(adv_NG).mean()),
        "rollout/zero_adv_group_frac": float(
            np.mean(np.all(adv_NG == 0, axis=-1))
        ),
        "rollout/sample_batches": float(max(rounds, 1)),
        "rollout/valid_group_frac": float(valid_N.mean()),
        "reward/failures": float(stats.failures),
        **{
            k: v
            for k, v in stats.metrics("reward").items()
            if k.count("/") == 1
        },
    })
    return batch, metrics, timings

  def _grade_shard(self, problems, tok_BT, len_B, stats):
    """Grades this process's prompts [lo, hi) (all of them with one process)
    and combines the rewards of all processes, in row order."""
    g = len(len_B) // len(problems)
    lo, hi = mp.shard(problems)
    texts = self._decode(tok_BT[lo * g : hi * g], len_B[lo * g : hi * g])
    r, ok = mp.agree(
        lambda: self.grade(
            problems[lo:hi], texts, len_B[lo * g : hi * g], stats
        ),
        "grading the rollouts",
    )
    return mp.gather_rows(r), mp.gather_rows(ok)

  def _inject(self, params, cat, off_NG, key, metrics) -> None:
    """AMPO: teacher solutions into groups with no correct rollout."""
    c = self.cfg
    need_N = ~np.any(cat["correct"], axis=-1)
    metrics["ampo/groups_guided"] = float(need_N.sum())
    metrics["ampo/injected_frac"] = 0.0
    if not need_N.any():
      return
    problems = list(cat["problem"])
    r = max(len(p.solutions) for p in problems)
    if r == 0:
      return
    n, t = len(problems), c.max_new_tokens
    comp = np.zeros((n, r, t), np.int32)
    lens = np.zeros((n, r), np.int32)
    valid = np.zeros((n, r), bool)
    ans = np.zeros((n, r, t), bool)  # answer-token columns of the completion
    for i, p in enumerate(problems):
      for j, (ids, text) in enumerate(
          zip(p.solutions, p.solution_texts, strict=True)
      ):
        if len(ids) > t:
          continue  # a truncated solution would teach a wrong ending
        comp[i, j, : len(ids)], lens[i, j], valid[i, j] = ids, len(ids), True
        at = text.rfind(p.answer_text) if p.answer_text else -1
        if at >= 0:
          lo = len(self.tok.encode(text[:at]))
          hi = len(self.tok.encode(text[: at + len(p.answer_text)]))
          ans[i, j, lo:hi] = True
    prompt, seg = self._prompts(problems)
    rows = _assemble(
        np.repeat(prompt, r, 0),
        np.repeat(seg, r, 0),
        comp.reshape(n * r, t),
        lens.reshape(n * r),
    )
    # Comprehension score: the current student's mean probability of the
    # gold answer tokens given the teacher's reasoning (docs/methods.md, "AMPO").
    t0 = time.perf_counter()
    lp = np.asarray(
        mp.fetch(
            self.logprob_fn(params, {k: self.put(v) for k, v in rows.items()})
        )
    ).reshape(n, r, -1)[..., self.width - 1 :]
    self.last_score_s = time.perf_counter() - t0
    p_ans = np.where(ans, np.exp(lp), 0.0)
    n_ans = ans.sum(-1)
    score_b = np.where(n_ans > 0, p_ans.sum(-1) / np.maximum(n_ans, 1), 0.0)
    scores = 0.9 * score_b + 0.1 * (n_ans > 0)
    inject, teacher = jax.device_get(
        losses.ampo_guidance(
            cat["correct"],
            scores,
            jax.random.fold_in(key, 10_007),
            teacher_valid_NT=valid,
            max_teachers=c.ampo_max_teachers,
        )
    )
    inject, teacher = np.asarray(inject), np.asarray(teacher)
    for i, j in zip(*np.nonzero(inject)):
      k = teacher[i, j]
      cat["tokens"][i, j] = comp[i, k]
      cat["slp"][i, j] = 0.0  # not sampled: no importance weight
      cat["lengths"][i, j] = lens[i, k]
      cat["rewards"][i, j] = 1.0
      cat["correct"][i, j] = True
      off_NG[i, j] = True
    metrics["ampo/injected_frac"] = float(inject.mean())
    metrics["ampo/teacher_score"] = float(scores[valid].mean())

  # -- GKD ------------------------------------------------------------------

  def gkd_batch(self, params, step: int, key: jax.Array, lam: float):
    """A GKD batch: student samples with probability λ, else dataset traces."""
    c, n = self.cfg, self.cfg.prompts_per_step
    timings = {"sample": 0.0, "grade": 0.0, "host": 0.0}
    on_policy = bool(
        np.random.default_rng([c.seed, step, 17]).random() < float(lam)
    )
    problems = self.source.take(n)
    t0 = time.perf_counter()
    if on_policy:
      p_BP, s_BP, tok_BT, len_B, _, _ = self.sample(params, problems, key, 1)
      timings["sample"] = time.perf_counter() - t0
    else:
      p_BP, s_BP = self._prompts(problems)
      tok_BT = np.zeros((n, c.max_new_tokens), np.int32)
      len_B = np.zeros(n, np.int32)
      for i, p in enumerate(problems):
        if not p.solutions:
          raise ValueError(
              "GKD off-policy batches need a dataset completion per prompt;"
              " the data source gave none."
          )
        tok_BT[i], len_B[i] = _pad_solution(p.solutions[0], c.max_new_tokens)
    t1 = time.perf_counter()
    batch = _assemble(p_BP, s_BP, tok_BT, len_B)
    timings["host"] = time.perf_counter() - t1
    if not on_policy:
      timings["host"] += t1 - t0
    metrics = {
        "gkd/on_policy": float(on_policy),
        "rollout/response_length": float(len_B.mean()),
    }
    return batch, metrics, timings
