#!/usr/bin/env bash
# The GPU check, on the borrowed H100/H200 (README "On a GPU"). That machine has Python 3.12, torch 2.11 with
# CUDA, timm, typer, rich, safetensors, scipy, matplotlib and pytest, and no internet, and a command carries at
# most 64 MiB (working tree included). So the rest of the stack travels as wheels made here by
# `scripts/device_prep.sh`, in three parts, one per command, run back to back (the machine keeps .device/
# between commands while it stays warm, 30 s):
#
#   scripts/device_check.sh prepare   carry .whl/prepare: OpenCV and onedl-mmcv without compiled ops, as the
#                                     default install has it: the detector runs domainmona's torch-native
#                                     kernels on every device (no build on the device machine)
#   scripts/device_check.sh run       carry .whl/run: the rest of the stack; every check but geo's
#   scripts/device_check.sh geo       carry .whl/geo: pyogrio; the geo segmentation demo
#
# benchmarks/device_check.py keeps the results in .device/device_check.json and writes it, with a markdown
# table, to $OUT after every check.
# Both install into .device/venv, a venv over the machine's own packages (its torch is the one tested).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.device/venv"
PY="$VENV/bin/python"
phase="${1:-}"
start=$(date +%s)
log() { printf '[device_check %ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

[[ "$phase" =~ ^(prepare|run|geo)$ ]] || { echo "usage: $0 prepare|run|geo" >&2; exit 2; }
[[ -d "$ROOT/.whl/$phase" ]] || { echo "error: $ROOT/.whl/$phase missing: run scripts/device_prep.sh here and carry it" >&2; exit 2; }
[[ -x "$PY" ]] || python3 -m venv --system-site-packages "$VENV"
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
# --no-deps: every dependency is either carried or already on the machine (its torch above all)
shopt -s nullglob
wheels=("$ROOT/.whl/$phase"/*.whl)
(( ${#wheels[@]} )) && pip install --no-index --no-deps "${wheels[@]}"
log "installed ${#wheels[@]} wheels from .whl/$phase"

if [[ "$phase" == prepare ]]; then
    PYTHONPATH="$ROOT" "$PY" -c 'import domainmona; from mmcv.ops import nms_rotated, box_iou_rotated, RoIAlignRotated'
    log "onedl-mmcv without compiled ops: mmcv.ops imports through domainmona's kernels"
    exit 0
fi

"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"; print(torch.cuda.get_device_name())'
cd "$ROOT"
PYTHONPATH="$ROOT" "$PY" benchmarks/device_check.py --checks "$phase" --out "${OUT:-$ROOT/.device/out}"
log "done"
