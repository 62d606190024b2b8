#!/usr/bin/env bash
# The model-selection demonstration end to end (about 3 hours on 2 shared CPU cores):
# pretrain the zoo, rank the candidates for three targets with fine-tuning checks, and copy
# the reports into experiments/results/select_*/. Every step resumes or reuses its workdir.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for zoo in r18_fm300 r18_fm60 r34_fm200 r50_fm200 minilm_mlm; do
  $PY -m jaxpretrain.pretrain --flagfile=experiments/select_zoo_$zoo.flags
done
for target in mnist digits tweets; do
  $PY -m jaxpretrain.select --flagfile=experiments/select_$target.flags
  mkdir -p experiments/results/select_$target
  cp workdirs/select_$target/{ranking.md,ranking.csv,scores.png,results.json} \
     experiments/results/select_$target/
done
