#!/usr/bin/env bash
# Prepare the GPU check here (needs the package registries): the wheels scripts/device_check.sh installs on the
# borrowed GPU machine (Python 3.12, torch 2.11 preinstalled, no internet), at the versions of
# scripts/constraints.txt, in three git-ignored folders, one per device command (each folder plus the working
# tree must stay under the 64 MiB a command carries; this script checks that):
#   .whl/prepare  OpenCV (mmcv's cv2, 52 MiB on its own) and onedl-mmcv without compiled ops (a pure-Python
#                 wheel built here, as scripts/install.sh installs it: domainmona serves its kernels)
#   .whl/run      the OpenMMLab stack, MONAI, nibabel, rasterio, shapely, smp and their small dependencies
#   .whl/geo      pyogrio (33 MiB; GeoTIFF scenes come with vector labels)
# Then, with the device tool, back to back (see scripts/device_check.sh):
#   run(command="bash scripts/device_check.sh prepare", carry=[".whl/prepare"])
#   run(command="bash scripts/device_check.sh run", carry=[".whl/run"])
#   run(command="bash scripts/device_check.sh geo", carry=[".whl/geo"])
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="$ROOT/scripts/constraints.txt"
PY="$ROOT/.venv/bin/python"  # its pip, setuptools and torch build the pure-Python wheels of sdist-only packages
LIMIT=$(( 64 * 1024 * 1024 ))
PREPARE=(opencv-python-headless)
RUN=(onedl-mmengine onedl-mmdetection onedl-mmrotate monai nibabel rasterio shapely segmentation_models_pytorch
     addict yapf platformdirs termcolor terminaltables pycocotools faster-coco-eval affine attrs certifi
     click-plugins cligj importlib_resources)
GEO=(pyogrio)

pinned() { local p; for p in "$@"; do grep -i -m1 "^$p==" "$CONSTRAINTS" || { echo "error: $p not in $CONSTRAINTS" >&2; exit 2; }; done; }
fetch() {  # folder, packages: cp312 manylinux wheels, or a pure-Python wheel built here from an sdist
    local dest="$1" req; shift
    mkdir -p "$dest"
    for req in $(pinned "$@"); do
        "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: --python-version 3.12 \
            --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$dest" "$req" \
            2>/dev/null || "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
            -w "$dest" "$req" 2>/dev/null
    done
}

rm -rf "$ROOT/.whl/prepare" "$ROOT/.whl/run" "$ROOT/.whl/geo"
fetch "$ROOT/.whl/prepare" "${PREPARE[@]}"
# pip's isolated build environment has no torch, so mmcv's setup.py leaves the extension out: no compiler
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$ROOT/.whl/prepare" "$(pinned onedl-mmcv)"
fetch "$ROOT/.whl/run" "${RUN[@]}"
fetch "$ROOT/.whl/geo" "${GEO[@]}"

tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
for part in prepare run geo; do
    size=$(du -cb "$ROOT/.whl/$part"/* | tail -1 | cut -f1)
    printf '.whl/%s: %d files, %.1f MiB; with the working tree %.1f of 64 MiB\n' "$part" \
        "$(ls "$ROOT/.whl/$part" | wc -l)" "$(echo "$size/1048576" | bc -l)" "$(echo "($size+$tree)/1048576" | bc -l)"
    (( size + tree < LIMIT )) || { echo "error: .whl/$part and the working tree exceed 64 MiB" >&2; exit 2; }
done
