#!/usr/bin/env bash
# Create .venv/ at the repo root with domainmona's real stack. Idempotent: re-running checks, not rebuilds.
#
# onedl-mmcv comes without its compiled C++/CUDA extension by default: PyPI has no wheel of it with ops for
# these Python/torch versions, building one takes ~12 min and a C++ toolchain, and domainmona serves the
# kernels its pipelines call from torch (domainmona/detection/mmcv_ext.py answers `import mmcv._ext`). pip
# builds that pure-Python wheel from the sdist in an isolated build environment without torch, where mmcv's
# setup.py skips the extension; no compiler runs.
#
# DOMAINMONA_MMCV_OPS=compile builds the extension instead (CPU kernels; CUDA too with a visible GPU and nvcc,
# or FORCE_CUDA=1). Its setup.py hard-codes `-std=c++14/17` while torch >= 2.13 headers need C++20 (upstream
# mmcv issue #3341): scripts/patched_mmcv_sdist.sh patches exactly those flags in a copy of the sdist kept
# at a stable path under the user cache, and pip keys its wheel cache by that path, so the ~20-minute CPU
# build happens once per machine. An installed compiled build is kept by later plain runs.
#
# Every package is installed at the exact version in scripts/constraints.txt (the known-good set, from
# `make constraints`), so a fresh machine gets the environment the tests passed in; pyproject.toml states
# only ranges. A new .venv uses $PYTHON, or else the newest supported python3.1x on PATH (CI pins
# PYTHON=python3.11 in .ci/run). An existing .venv is reused as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DOMAINMONA_VENV:-$ROOT/.venv}"  # another path for side-by-side builds (benchmarks/bench_mmcv_build.py)
CONSTRAINTS="$ROOT/scripts/constraints.txt"
SUPPORTED=(3.13 3.12 3.11)  # newest first; pyproject.toml's requires-python
MMCV_VERSION="$(sed -n 's/^onedl-mmcv==//p' "$CONSTRAINTS")"
CACHE="${DOMAINMONA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/domainmona}"
start=$(date +%s)

log() { printf '[install] %s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 2; }
MMCV_OPS="${DOMAINMONA_MMCV_OPS:-torch}"
[[ "$MMCV_OPS" == torch || "$MMCV_OPS" == compile ]] || \
    fail "DOMAINMONA_MMCV_OPS=$MMCV_OPS is not one of torch (the default: no compiler), compile"
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

# $PYTHON, else the newest supported python3.1x that runs (a pyenv shim is on PATH for every installed
# version but runs only the activated ones).
pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
        return
    fi
    local version
    for version in "${SUPPORTED[@]}"; do
        if py_version "python$version" >/dev/null; then
            echo "python$version"
            return
        fi
    done
    fail "no python3.13, python3.12 or python3.11 on PATH; set PYTHON to one"
}

if [[ -x "$VENV/bin/python" ]]; then
    venv_version="$(py_version "$VENV/bin/python")"
    if [[ -n "${PYTHON:-}" && "$(py_version "$PYTHON")" != "$venv_version" ]]; then
        fail "$VENV has Python $venv_version, PYTHON=$PYTHON is not it: remove $VENV to switch"
    fi
    log "reusing $VENV (Python $venv_version)"
else
    py="$(pick_python)"
    version="$(py_version "$py")" || fail "PYTHON=$py does not run"
    [[ " ${SUPPORTED[*]} " == *" $version "* ]] || fail "$py is Python $version; supported: ${SUPPORTED[*]}"
    log "creating $VENV with $py (Python $version)"
    "$py" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pinned() { pip install -c "$CONSTRAINTS" "$@"; }

pinned -q pip setuptools wheel packaging
log "$(grep -E '^torch(vision)?==' "$CONSTRAINTS" | tr '\n' ' ')"
pinned -q torch torchvision

# Without domainmona imported, `import mmcv._ext` finds only the compiled extension.
if "$VENV/bin/python" -c 'import mmcv._ext' 2>/dev/null; then
    log "onedl-mmcv with compiled ops already installed (kept)"
elif [[ "$MMCV_OPS" == compile ]]; then
    pinned -q ninja
    # CPU or CUDA ops: CUDA only where a GPU is visible and nvcc exists, or when FORCE_CUDA=1 is set.
    if [[ "${FORCE_CUDA:-}" == 1 ]] || { command -v nvcc >/dev/null && "$VENV/bin/python" -c \
            'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }; then
        export FORCE_CUDA=1
        variant="cuda$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda)')"
    else
        export FORCE_CUDA=0
        variant=cpu
    fi
    torch_version="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
    log "patching onedl-mmcv $MMCV_VERSION sdist for C++20 (scripts/patched_mmcv_sdist.sh)"
    sdist="$(PYTHON_FOR_PIP="$VENV/bin/python" bash "$ROOT/scripts/patched_mmcv_sdist.sh" \
        "$CACHE/mmcv-src/torch$torch_version-$variant")"
    log "building onedl-mmcv ops ($variant; ~20 min on 2 CPU cores the first time, cached after)"
    # A *named* requirement: pip consults its wheel cache only for requirements whose name it knows.
    replace=()  # a build without ops of the same version is replaced, its dependencies kept
    "$VENV/bin/python" -c 'import mmcv' 2>/dev/null && replace=(--force-reinstall --no-deps)
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" pinned --no-build-isolation "${replace[@]}" \
        "onedl-mmcv @ file://$sdist"
elif "$VENV/bin/python" -c 'import mmcv' 2>/dev/null; then
    log "onedl-mmcv without compiled ops already installed (kept; DOMAINMONA_MMCV_OPS=compile builds them)"
else
    log "onedl-mmcv $MMCV_VERSION without compiled ops: domainmona's torch-native kernels serve every device"
    # Built in pip's isolated build environment, which has no torch: mmcv's setup.py then skips the extension.
    pinned -q "onedl-mmcv==$MMCV_VERSION"
fi

log "domainmona and the rest of the stack"
pinned -q -e "$ROOT[test]"
pip check
"$VENV/bin/python" -c 'import domainmona, mmdet, mmrotate; from mmcv.ops import nms_rotated, box_iou_rotated, RoIAlignRotated'
log "done in $(( $(date +%s) - start )) s"
