"""Progress on the console, and the markdown + PNG reports a run leaves in its workdir.

Progress: on a terminal a one-line bar (`\\r`-redrawn) with steps/s and ETA, and the logged
metrics printed above it; otherwise (a file, CI) plain log lines at --log_every.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jaxpretrain.job.config import PROGRESS

_BAR = 30


def _duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_metrics(metrics: Mapping[str, float], keys: Sequence[str] | None = None) -> str:
  keys = keys or list(metrics)
  out = []
  for k in keys:
    if k in metrics:
      v = metrics[k]
      out.append(f"{k} {v:.3g}" if k in ("lr",) else f"{k} {v:.4f}")
  return "  ".join(out)


class Progress:
  """Steps/s and ETA for a run from `start_step` to `total_steps`."""

  def __init__(self, start_step: int, total_steps: int, mode: str = "auto", stream=None):
    """`mode`: --progress (config.PROGRESS): auto (a bar on a terminal) | bar | log."""
    if mode not in PROGRESS:
      raise ValueError(f"progress mode {mode!r} unknown; known: {PROGRESS}")
    self.stream = stream or sys.stdout
    tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.bar = mode == "bar" or (mode == "auto" and tty)
    self.total = total_steps
    self._t0, self._s0 = time.perf_counter(), start_step
    self._mark = None  # (time, step) after the first step: excludes compilation from rates
    self._last_draw = 0.0

  def rate(self, step: int) -> float:
    """Steps per second since the first completed step."""
    if self._mark is None or step <= self._mark[1]:
      return float("nan")
    return (step - self._mark[1]) / max(time.perf_counter() - self._mark[0], 1e-9)

  def eta(self, step: int) -> str:
    r = self.rate(step)
    return _duration((self.total - step) / r) if r == r and r > 0 else "?"

  def update(self, step: int) -> None:
    if self._mark is None:
      self._mark = (time.perf_counter(), step)
    if self.bar and (time.perf_counter() - self._last_draw > 0.2 or step == self.total):
      self._last_draw = time.perf_counter()
      done = int(_BAR * step / max(self.total, 1))
      r = self.rate(step)
      rate = f"{r:.2f} steps/s" if r == r else "compiling"
      self.stream.write(f"\r[{'#' * done}{'.' * (_BAR - done)}] {step}/{self.total} "
                        f"{rate} ETA {self.eta(step)}   ")
      self.stream.flush()

  def log(self, line: str) -> None:
    if self.bar:
      self.stream.write("\r" + " " * 79 + "\r")
    self.stream.write(line + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.bar:
      self.stream.write("\n")
      self.stream.flush()


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                title: str = "", *, baseline: float | None = None,
                log_every: int | None = None) -> pathlib.Path:
  """curves.png: loss, accuracy and learning rate against step; training points (each the
  mean over --log_every steps, stated on the figure) and evaluation points; the
  majority-class `baseline` on accuracy; dotted lines where the run was resumed."""
  import matplotlib  # noqa: PLC0415 -- heavy; only at the end of a run

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  resumes = sorted({r["step"] for r in records if r.get("kind") == "resume"})
  smoothing = (f"training: mean over each {log_every} steps" if log_every and log_every > 1
               else "training: every step")
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  for ax, key in zip(axes, ("loss", "accuracy", "lr"), strict=True):
    kinds = (("train", "-", smoothing),) if key == "lr" else (
        ("train", "-", smoothing), ("eval", "o-", "evaluation"))
    for kind, style, label in kinds:
      pts = [(r["step"], r[key]) for r in records if r.get("kind") == kind and key in r]
      if pts:
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, style, label=label, markersize=3)
    if key == "accuracy" and baseline is not None:
      ax.axhline(baseline, color="gray", linestyle="--", label=f"majority class {baseline:.3f}")
    for i, step in enumerate(resumes):
      ax.axvline(step, color="black", linestyle=":", alpha=0.6,
                 label="resumed" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate" if key == "lr" else key)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def has_top5(m: Mapping[str, Any]) -> bool:
  """Top-5 accuracy means something only with more than 5 classes (else it is 1)."""
  return "top5" in m and len(m.get("class_names", ())) > 5


def metrics_table(m: Mapping[str, Any]) -> str:
  """The headline metrics as a markdown table."""
  rows = [("examples", f"{m['num_examples']}"), ("accuracy", f"{m['accuracy']:.4f}")]
  if has_top5(m):
    rows.append(("top-5 accuracy", f"{m['top5']:.4f}"))
  rows += [("macro-F1", f"{m['macro_f1']:.4f}"),
          ("MCC", f"{m['mcc']:.4f}"), ("loss", f"{m['loss']:.4f}"),
          ("majority-class baseline", f"{m['majority_baseline']:.4f}")]
  return "| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def per_class_table(m: Mapping[str, Any]) -> str:
  out = "| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n"
  for r in m["per_class"]:
    out += (f"| {r['name']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
            f"{r['support']} |\n")
  return out


def confusion_table(m: Mapping[str, Any]) -> str:
  names = m["class_names"]
  out = "| true \\ predicted | " + " | ".join(names) + " |\n"
  out += "|---" * (len(names) + 1) + "|\n"
  for name, row in zip(names, m["confusion"], strict=True):
    out += f"| {name} | " + " | ".join(str(v) for v in row) + " |\n"
  return out


def evaluation_markdown(m: Mapping[str, Any], title: str) -> str:
  """Metrics, per-class table and confusion matrix of one evaluation."""
  return (f"## {title}\n\n{metrics_table(m)}\n### Per class\n\n{per_class_table(m)}\n"
          f"### Confusion matrix (rows: true class, columns: predicted)\n\n{confusion_table(m)}")


def run_report(*, summary: Mapping[str, Any], final: Mapping[str, Any] | None,
               curves: str | None) -> str:
  """report.md of a finished run."""
  lines = [f"# {summary.get('title', 'Run report')}", "",
           f"Finished {datetime.datetime.now().isoformat(timespec='seconds')}.", "",
           "| | |", "|---|---|"]
  for k, v in summary.items():
    if k != "title":
      lines.append(f"| {k} | {v} |")
  text = "\n".join(lines) + "\n\n"
  if curves:
    text += f"![loss, accuracy and learning rate against step]({curves})\n\n"
  if final is not None:
    if "per_class" in final:
      text += evaluation_markdown(final, "Test set")
    else:
      text += "## Test set\n\n| metric | value |\n|---|---|\n" + "".join(
          f"| {k} | {v:.4f} |\n" for k, v in final.items() if isinstance(v, float))
  return text
