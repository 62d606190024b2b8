#!/usr/bin/env bash
# The GPU checks of issue 18, for one device session (15 minutes of device time in all).
# Run benchmarks/gpu_prepare.sh here first; then, through the device tool, from the repo root:
#   bash benchmarks/gpu_session.sh bench   # the gpu suite: jaxpretrain vs torch eager and
#                                          # torch.compile, 4 cases (< 9 min; timeout_s 570)
#   bash benchmarks/gpu_session.sh job     # the job end to end on the GPU (< 6 min)
# each with carry [".whl", ".gpu_data"] (about 55 MB with the tree; the tool carries 64 MiB). Results land in $OUT, at most 8 files as the tool returns
# them: bench -- gpu-*.md/json, bench.log, nvidia-smi.txt; job -- job.txt (exit status and wall
# time per run), job-reports.md (the runs' report.md), job.log (the consoles), pipeline.log.
#
# The job stage runs the ResNet flagfiles (Fashion-MNIST pretraining, then the MNIST
# fine-tune) and the MiniLM tweets experiment from random init (minilm_tweets_scratch): the
# real all-MiniLM-L6-v2 weights (91 MB) are larger than what the device tool carries (64 MiB),
# and the GPU machine cannot download them. Same network and data, so the step rate and the
# input pipeline's share are those of the default run.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_session.sh bench|job}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH=/tmp/site:$PWD:$PWD/.gpu_data/site PYTHONUNBUFFERED=1
export TFDS_DATA_DIR=$PWD/.gpu_data JAXPRETRAIN_FASHION_MNIST_DIR=$PWD/.gpu_data/fashion-mnist-idx
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"

case $stage in
  bench)
    timeout 540 python3 -m benchmarks.run --suite gpu --out "$OUT" 2>&1 | tee "$OUT/bench.log"
    ;;
  job)
    python3 -m jaxpretrain.data.build fashion_mnist_local --data_dir="$TFDS_DATA_DIR" \
        | tee "$OUT/job.txt"
    for exp in resnet_fmnist_pretrain resnet_mnist_finetune minilm_tweets_scratch; do
      start=$(date +%s)
      echo "== $exp" >>"$OUT/job.log"
      timeout 300 python3 -m jaxpretrain.finetune --flagfile="experiments/$exp.flags" \
          --data_dir="$TFDS_DATA_DIR" >>"$OUT/job.log" 2>&1
      echo "$exp: exit $?, wall $(( $(date +%s) - start )) s" | tee -a "$OUT/job.txt"
      { echo "# $exp"; cat "workdirs/$exp/report.md"; echo; } >>"$OUT/job-reports.md" 2>/dev/null
    done
    # The input pipeline alone (grain, 0 and 4 workers), to set against the step rates above.
    timeout 120 python3 -m benchmarks.data_pipeline --data_dir="$TFDS_DATA_DIR" \
        --worker_counts=0,4 >"$OUT/pipeline.log" 2>&1
    ;;
  *) echo "unknown stage '$stage'; allowed: bench, job" >&2; exit 2 ;;
esac
