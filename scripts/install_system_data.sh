#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist (the IDX files behind fashion_mnist_local).
set -euo pipefail
pkg=dataset-fashion-mnist
if dpkg -s "$pkg" >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: no apt-get; install $pkg by hand for the fashion_mnist_local dataset" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "warning: not root; run 'apt-get install $pkg' for fashion_mnist_local" >&2; exit 0
  fi
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
echo "installed $pkg"
