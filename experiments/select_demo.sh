#!/usr/bin/env bash
# The model-selection demonstration end to end (about 3 hours on 2 shared CPU cores):
# pretrain the zoo, rank the candidates for each target with fine-tuning checks, and copy
# the reports into experiments/results/select_*/. Every step resumes or reuses its workdir.
#
#   ZOO       zoo entries to pretrain, by name (experiments/select_zoo_NAME.flags); "" for none
#   TARGETS   targets to rank for, by name (experiments/select_NAME.flags)
#   arguments are passed to every `jaxpretrain.select` run after its flagfile, so they win:
#     TARGETS=digits ZOO= experiments/select_demo.sh --candidates=a=ckpt_a,b=random:resnet18 \
#         --finetune_seeds=3 --max_params=30e6
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/copy_reports.sh
PY=${PY:-.venv/bin/python}
ZOO=${ZOO-r18_fm300 r18_fm60 r34_fm200 r50_fm200 minilm_mlm}
TARGETS=${TARGETS-mnist digits tweets}
for zoo in $ZOO; do
  $PY -m jaxpretrain.pretrain --flagfile="experiments/select_zoo_$zoo.flags"
  copy_reports "select_zoo/$zoo"
done
for target in $TARGETS; do
  $PY -m jaxpretrain.select --flagfile="experiments/select_$target.flags" "$@"
  copy_reports "select_$target"
done
