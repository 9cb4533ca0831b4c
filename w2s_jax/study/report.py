"""The study's report: per-model table, per-claim statistics, figure, JSON.

``aggregate`` groups per-seed rows by model id in first-seen order and gives
each metric's mean and sample standard deviation over the seeds that have
it; ``claims`` compares, for every claim of ``configs/study.py``, the two
models it names with a paired bootstrap over test problems per seed and a
sign count across seeds (``evals.bootstrap``), and gives the verdict
against the direction written down before the run; ``plot`` draws one
panel per claim; ``write`` saves ``results.json``, ``results.md`` and
``results.png`` atomically. ``results.json`` holds no wall times (they go
to ``timings.json``), so one config gives one file, byte for byte.

Shape legend: none (host-side reporting only).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from w2s_jax.evals import bootstrap

METRICS = (
    "pass@1",
    "greedy",
    "pass@1_strict",
    "format",
    "step_acc",
    "grpo_gain",
    "rgr",
)
HEADERS = (
    "answer acc (any notation)",
    "greedy",
    "answer acc (terse only)",
    "format",
    "step acc",
    "GRPO gain",
    "RGR vs GRPO",
)
GROUP_TITLES = {
    "base": "baselines",
    "a": "(a) W2SR",
    "b": "(b) RSD",
    "c": "(c) preference after SFT",
    "d": "(d) RL and distillation",
}
NUM_RESAMPLES = 2000


def _mean(x: Sequence[float]) -> float:
  return float(np.mean(np.asarray(x, np.float64)))


def attach_rgr(
    rows: Sequence[dict[str, Any]],
    base: dict[str, Any],
    grpo: dict[str, Any] | None,
    outcomes: Mapping[str, Sequence[float]],
    *,
    min_gain: float,
) -> None:
  """Adds the GRPO gain and the Reasoning Gap Recovered to (a) rows.

  RGR = (Acc_arm - Acc_base) / (Acc_GRPO - Acc_base) (W2SR, arXiv
  2505.20072), with GRPO run on the same untrained student. The GRPO row
  gets ``grpo_gain`` (its paired difference over the untrained student);
  RGR is defined only when that gain is at least ``min_gain`` and its 95%
  CI excludes 0, else the (a) rows say why and carry no RGR.

  Args:
    rows: per-seed rows, changed in place.
    base: the untrained student's row.
    grpo: the GRPO-on-the-untrained-student row, or None ('not run').
    outcomes: per-problem test scores by model id.
    min_gain: the smallest GRPO gain for which RGR is reported.
  """
  if grpo is None or "pass@1" not in grpo:
    return
  ci = bootstrap.paired_bootstrap(
      outcomes[base["id"]], outcomes[grpo["id"]], num_resamples=NUM_RESAMPLES
  )
  grpo["grpo_gain"] = ci["diff"]
  grpo["note"] = (
      f"gain over the untrained student {ci['diff']:+.3f}"
      f" [{ci['lo']:+.3f}, {ci['hi']:+.3f}]"
  )
  defined = ci["diff"] >= min_gain and ci["lo"] > 0
  for row in rows:
    if row.get("group") != "a" or "pass@1" not in row or row is grpo:
      continue
    if defined:
      row["rgr"] = (row["pass@1"] - base["pass@1"]) / ci["diff"]
    else:
      row["note"] = "; ".join(
          x
          for x in (
              row.get("note", ""),
              (
                  f"RGR undefined: GRPO gain {ci['diff']:+.3f} < {min_gain:g}"
                  " or its CI includes 0"
              ),
          )
          if x
      )


def _seed_notes(rows: Sequence[dict[str, Any]]) -> str:
  """One model's notes over seeds: the parts every seed shares once, then
  each seed's own parts tagged ``seed <s>:`` (parts are ``; ``-separated)."""
  parts = [
      (
          int(r.get("seed", 0)),
          [p for p in str(r.get("note", "")).split("; ") if p],
      )
      for r in rows
  ]
  if len(parts) == 1:
    return "; ".join(parts[0][1])
  common = [p for p in parts[0][1] if all(p in ps for _, ps in parts)]
  out = list(common)
  for seed, ps in parts:
    out += [f"seed {seed}: {p}" for p in ps if p not in common]
  return "; ".join(out)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean and std over seeds of every metric, one entry per model id.

  Returns:
    ``{group, id, arm, seeds, note, <metric>: {mean, std, n}}`` entries in
    first-seen order; NaN values are left out, and a metric with no finite
    value is absent.
  """
  order: list[str] = []
  by_id: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    mid = str(r.get("id", r["arm"]))
    if mid not in by_id:
      order.append(mid)
      by_id[mid] = []
    by_id[mid].append(r)
  out = []
  for mid in order:
    group_rows = by_id[mid]
    entry: dict[str, Any] = {
        "group": str(group_rows[0]["group"]),
        "id": mid,
        "arm": str(group_rows[0]["arm"]),
        "seeds": sorted({int(r.get("seed", 0)) for r in group_rows}),
        "note": _seed_notes(group_rows),
    }
    for m in METRICS:
      vals = [
          float(r[m])
          for r in group_rows
          if m in r and r[m] is not None and math.isfinite(float(r[m]))
      ]
      if vals:
        x = np.asarray(vals, np.float64)
        entry[m] = {
            "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "n": int(x.size),
        }
    out.append(entry)
  return out


def claims(
    specs: Sequence[Sequence[Any]],
    outcomes: Sequence[Mapping[str, Sequence[float]]],
    *,
    min_effect: float,
) -> list[dict[str, Any]]:
  """Statistics and verdict of every claim.

  Args:
    specs: ``(name, a_id, b_id, direction, source)`` per claim: the claim
      expects ``b - a`` to have the sign of ``direction`` (+1 / -1).
    outcomes: per seed, per-problem test scores by model id.
    min_effect: the smallest difference that counts as the claimed effect.

  Returns:
    One dict per claim: the spec, per-seed accuracies of both models, and
    ``bootstrap.compare``'s result over the seeds where both ran (a claim
    with no such seed is ``not run``).
  """
  out = []
  for name, a, b, direction, source in specs:
    pairs = [(o[a], o[b]) for o in outcomes if a in o and b in o]
    entry: dict[str, Any] = {
        "claim": str(name),
        "a": str(a),
        "b": str(b),
        "direction": int(direction),
        "source": str(source),
        "acc_a": [_mean(x) for x, _ in pairs],
        "acc_b": [_mean(y) for _, y in pairs],
    }
    if pairs:
      entry.update(
          bootstrap.compare(
              pairs,
              direction=int(direction),
              min_effect=min_effect,
              num_resamples=NUM_RESAMPLES,
          )
      )
      entry["arm_ci_a"] = [_arm_ci(x) for x, _ in pairs]
      entry["arm_ci_b"] = [_arm_ci(y) for _, y in pairs]
    else:
      entry["verdict"] = "not run"
    out.append(entry)
  return out


def _arm_ci(x: Sequence[float]) -> list[float]:
  """95% bootstrap CI of one model's mean score over problems."""
  ci = bootstrap.paired_bootstrap(
      np.zeros(len(x)), x, num_resamples=NUM_RESAMPLES
  )
  return [ci["lo"], ci["hi"]]


def _cell(stat: dict[str, Any] | None) -> str:
  if not stat:
    return "–"
  if stat["n"] > 1:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
  return f"{stat['mean']:.3f}"


def table(entries: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of ``aggregate``'s entries (one row per model)."""
  lines = [
      "| group | model | " + " | ".join(HEADERS) + " | note |",
      "|---|---|" + "---|" * len(HEADERS) + "---|",
  ]
  for e in entries:
    cells = [_cell(e.get(m)) for m in METRICS]
    lines.append(
        f"| {GROUP_TITLES.get(e['group'], e['group'])} | {e['arm']} | "
        + " | ".join(cells)
        + f" | {e['note']} |"
    )
  return "\n".join(lines)


def _names(entries: Sequence[dict[str, Any]]) -> dict[str, str]:
  return {e["id"]: e["arm"] for e in entries}


def claims_table(
    results: Sequence[dict[str, Any]], names: Mapping[str, str]
) -> str:
  """A Markdown table: claim, models, difference, CI per seed, verdict."""
  lines = [
      (
          "| claim (expected) | b vs a | b − a | 95% CI per seed | seeds"
          " agreeing | verdict |"
      ),
      "|---|---|---|---|---|---|",
  ]
  for r in results:
    sign = ">" if r["direction"] > 0 else "<"
    pair = f"{names.get(r['b'], r['b'])} {sign} {names.get(r['a'], r['a'])}"
    if "seeds" not in r:
      lines.append(f"| {r['claim']} | {pair} | – | – | – | not run |")
      continue
    cis = ", ".join(f"[{c['lo']:+.3f}, {c['hi']:+.3f}]" for c in r["seeds"])
    s = r["signs"]
    n = int(s["agree"] + s["disagree"] + s["ties"])
    lines.append(
        f"| {r['claim']} | {pair} | {r['mean_diff']:+.3f} | {cis} |"
        f" {int(s['agree'])}/{n} (p={s['p']:.3g}) | {r['verdict']} |"
    )
  return "\n".join(lines)


def plot(
    results: Sequence[dict[str, Any]], names: Mapping[str, str], path: str
) -> None:
  """One panel per claim: its two models, their CIs, difference, verdict.

  One seed: bars with the 95% bootstrap CI over problems. Several seeds:
  bars at the mean over seeds, and each seed's accuracy as a dot with its
  own 95% bootstrap CI over problems (no error bar over seeds). A claim
  that did not run gets an empty panel saying so.
  """
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  cols = 3
  rows = max(1, math.ceil(len(results) / cols))
  fig, axes = plt.subplots(
      rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False
  )
  for ax in axes.flat[len(results) :]:
    ax.axis("off")
  for ax, r in zip(axes.flat, results):
    ax.set_title(r["claim"], fontsize=8)
    ax.set_ylim(0, 1.05)
    if "seeds" not in r:
      ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
      ax.set_xticks([])
      continue
    labels = [names.get(r["a"], r["a"]), names.get(r["b"], r["b"])]
    accs = [np.asarray(r["acc_a"]), np.asarray(r["acc_b"])]
    means = [float(x.mean()) for x in accs]
    if len(r["seeds"]) == 1:
      cis = [r["arm_ci_a"][0], r["arm_ci_b"][0]]
      err = [[m - c[0] for m, c in zip(means, cis)]]
      err.append([c[1] - m for m, c in zip(means, cis)])
      ax.bar([0, 1], means, 0.6, yerr=err, capsize=4, color=["C7", "C0"])
    else:
      ax.bar([0, 1], means, 0.6, color=["C7", "C0"], alpha=0.6)
      for i, (x, cis) in enumerate(
          zip(accs, (r["arm_ci_a"], r["arm_ci_b"]), strict=True)
      ):
        # Each seed: its accuracy and its 95% bootstrap CI over problems.
        xs = i + np.linspace(-0.2, 0.2, x.size)
        lo = [v - c[0] for v, c in zip(x, cis, strict=True)]
        hi = [c[1] - v for v, c in zip(x, cis, strict=True)]
        ax.errorbar(xs, x, yerr=[lo, hi], fmt="k.", ms=4, lw=0.8, capsize=2)
    ax.set_xticks([0, 1], [_wrap(s) for s in labels], fontsize=6)
    s = r["signs"]
    ax.set_xlabel(
        f"b − a = {r['mean_diff']:+.3f}; {r['verdict']}"
        f" ({int(s['agree'])}/{len(r['seeds'])} seeds)",
        fontsize=7,
    )
  axes.flat[0].set_ylabel("test answer accuracy (any notation)", fontsize=7)
  fig.tight_layout()
  d = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".png")
  os.close(fd)
  # No timestamp in the PNG metadata: one config, one file.
  fig.savefig(tmp, dpi=100, metadata={"Software": None})
  plt.close(fig)
  os.replace(tmp, path)


def _wrap(text: str, width: int = 24) -> str:
  words, lines, line = text.split(), [], ""
  for w in words:
    if line and len(line) + 1 + len(w) > width:
      lines.append(line)
      line = w
    else:
      line = f"{line} {w}".strip()
  return "\n".join([*lines, line])


def _atomic_text(path: str, text: str) -> None:
  d = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_timings(workdir: str, timings: dict[str, Any]) -> None:
  """Wall times (machine- and load-dependent) to ``timings.json``."""
  _atomic_text(
      os.path.join(workdir, "timings.json"), json.dumps(timings, indent=2)
  )


def write(
    workdir: str,
    rows: Sequence[dict[str, Any]],
    outcomes: Sequence[Mapping[str, Sequence[float]]],
    config: Mapping[str, Any],
) -> dict[str, Any]:
  """Writes results.json / results.md / results.png; returns the tables."""
  entries = aggregate(rows)
  specs = config.get("claims", {}).get("specs", ())
  min_effect = float(config.get("claims", {}).get("min_effect", 0.02))
  results = claims(specs, outcomes, min_effect=min_effect)
  names = _names(entries)
  md, cmd = table(entries), claims_table(results, names)
  _atomic_text(
      os.path.join(workdir, "results.json"),
      json.dumps(
          {
              "rows": entries,
              "claims": results,
              "per_seed": list(rows),
              "config": config,
          },
          indent=2,
          sort_keys=True,
          default=str,
      )
      + "\n",
  )
  _atomic_text(os.path.join(workdir, "results.md"), md + "\n\n" + cmd + "\n")
  plot(results, names, os.path.join(workdir, "results.png"))
  return {"table": md, "claims_table": cmd, "rows": entries, "claims": results}
