#!/usr/bin/env bash
# Print the path of onedl-mmcv's sdist (version from scripts/constraints.txt) with its C++ standard raised to
# C++20, making it once under DIR (argument 1). onedl-mmcv's setup.py hard-codes `-std=c++14/17` for the
# extension while torch >= 2.13 headers need C++20 (upstream mmcv issue #3341); we patch exactly those flags.
# Used by scripts/install.sh (DIR is keyed by torch version and CPU/CUDA, so pip's wheel cache, keyed by the
# path, builds once per machine) and scripts/device_prep.sh (the GPU check builds it there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$1"
python="${PYTHON_FOR_PIP:-python3}"
version="$(sed -n 's/^onedl-mmcv==//p' "$ROOT/scripts/constraints.txt")"
sdist="$dir/onedl_mmcv-$version.tar.gz"
if [[ ! -f "$sdist" ]]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        "onedl-mmcv==$version" -d "$work" >&2
    tar -xzf "$work/onedl_mmcv-$version.tar.gz" -C "$work"
    sed -i -E "s/-std=c\+\+1[47]/-std=c++20/g" "$work/onedl_mmcv-$version/setup.py"
    grep -q -- "-std=c++20" "$work/onedl_mmcv-$version/setup.py"
    mkdir -p "$dir"
    tar -czf "$work/patched.tar.gz" -C "$work" "onedl_mmcv-$version"
    mv "$work/patched.tar.gz" "$sdist"
fi
echo "$sdist"
