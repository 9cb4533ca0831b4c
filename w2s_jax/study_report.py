"""The study's report: aggregate over seeds, Markdown table, bar chart, JSON.

``aggregate`` groups per-seed rows by (group, arm) in first-seen order and
gives each metric's mean and sample standard deviation over the seeds that
have it (std is 0 for one seed and NaN-free); ``table`` renders them as
Markdown (``mean ± std``, or ``mean`` for one seed); ``plot`` draws answer
and step accuracy bars with std error bars; ``write`` saves
``results.json``, ``results.md`` and ``results.png`` atomically.

Shape legend: none (host-side reporting only).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS = (
    "pass@1",
    "greedy",
    "step_acc",
    "rgr_vs_grpo",
    "rgr_vs_latent_ceiling",
)
GROUP_TITLES = {
    "base": "baselines",
    "a": "(a) W2SR",
    "b": "(b) RSD",
    "c": "(c) preference after SFT",
    "d": "(d) RL and distillation",
}


def attach_rgr(
    rows: Sequence[dict[str, Any]],
    base: dict[str, Any],
    ceiling: dict[str, Any] | None,
    grpo: dict[str, Any] | None,
) -> None:
  """Adds the Reasoning Gap Recovered to every (a) row, in place.

  RGR = (Acc_arm - Acc_base) / (Acc_ref - Acc_base) (METHODS §2) with two
  references: GRPO on the same untrained student (``rgr_vs_grpo``, the
  paper's definition) and the student's accuracy in its own latent format
  (``rgr_vs_latent_ceiling``, what the toy world says is there to elicit).
  An undefined ratio (no gap) is NaN; a missing reference adds nothing.

  Args:
    rows: per-seed rows; those with ``group == 'a'`` and a ``pass@1`` get
      the ratios (the GRPO reference row itself is skipped).
    base: the untrained student's row.
    ceiling: the latent-ceiling row, or None.
    grpo: the GRPO-on-the-untrained-student row, or None ('not run').
  """
  from w2s_jax.evals import metrics  # noqa: PLC0415

  refs = {"rgr_vs_grpo": grpo, "rgr_vs_latent_ceiling": ceiling}
  for row in rows:
    if row.get("group") != "a" or "pass@1" not in row or row is grpo:
      continue
    for key, ref in refs.items():
      if ref is not None and "pass@1" in ref:
        row[key] = metrics.reasoning_gap_recovered(
            row["pass@1"], base["pass@1"], ref["pass@1"]
        )


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean and std over seeds of every metric, one entry per (group, arm).

  Args:
    rows: per-seed rows with ``group``, ``arm``, ``seed``, optional ``note``
      and any of ``METRICS``.

  Returns:
    ``{group, arm, seeds, note, <metric>: {mean, std, n}}`` entries; NaN
    values (an undefined RGR) are left out of the statistics, and a metric
    with no finite value is absent.
  """
  order: list[tuple[str, str]] = []
  by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in rows:
    key = (str(r["group"]), str(r["arm"]))
    if key not in by_key:
      order.append(key)
      by_key[key] = []
    by_key[key].append(r)
  out = []
  for key in order:
    group_rows = by_key[key]
    entry: dict[str, Any] = {
        "group": key[0],
        "arm": key[1],
        "seeds": sorted({int(r.get("seed", 0)) for r in group_rows}),
        "note": "; ".join(
            sorted({str(r["note"]) for r in group_rows if r.get("note")})
        ),
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


def _cell(stat: dict[str, Any] | None) -> str:
  if not stat:
    return "–"
  if stat["n"] > 1:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
  return f"{stat['mean']:.3f}"


def table(entries: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of ``aggregate``'s entries."""
  lines = [
      (
          "| group | arm | answer acc (pass@1) | greedy | step acc | RGR vs"
          " GRPO | RGR vs latent ceiling | note |"
      ),
      "|---|---|---|---|---|---|---|---|",
  ]
  for e in entries:
    cells = [_cell(e.get(m)) for m in METRICS]
    lines.append(
        f"| {GROUP_TITLES.get(e['group'], e['group'])} | {e['arm']} | "
        + " | ".join(cells)
        + f" | {e['note']} |"
    )
  return "\n".join(lines)


def plot(entries: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """Answer and step accuracy bars (mean, std error bars) per arm."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  shown = [e for e in entries if "pass@1" in e]
  fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(shown) + 2), 4.5))
  x = np.arange(len(shown))
  for offset, m, label in (
      (-0.2, "pass@1", "answer"),
      (0.2, "step_acc", "step"),
  ):
    mean = [e[m]["mean"] if m in e else 0.0 for e in shown]
    std = [e[m]["std"] if m in e else 0.0 for e in shown]
    ax.bar(x + offset, mean, 0.4, yerr=std, capsize=2, label=label)
  ax.set_xticks(
      x,
      [f"{e['group']}: {e['arm']}" for e in shown],
      rotation=60,
      ha="right",
      fontsize=7,
  )
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("held-out accuracy")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  d = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".png")
  os.close(fd)
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def _atomic_text(path: str, text: str) -> None:
  d = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write(
    workdir: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
  """Writes results.json / results.md / results.png; returns the table."""
  entries = aggregate(rows)
  md = table(entries)
  seeds = sorted({int(r.get("seed", 0)) for r in rows})
  _atomic_text(
      os.path.join(workdir, "results.json"),
      json.dumps(
          {"rows": entries, "per_seed": list(rows), "meta": meta},
          indent=2,
          default=str,
      ),
  )
  _atomic_text(os.path.join(workdir, "results.md"), md + "\n")
  plot(
      entries,
      os.path.join(workdir, "results.png"),
      "Synthetic weak-to-strong study, held-out (mean ± std over"
      f" {len(seeds)} seed{'s' if len(seeds) > 1 else ''})",
  )
  return {"table": md, "rows": entries}
