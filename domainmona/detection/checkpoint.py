"""The final detector checkpoint that `train` prints and `test` (and `tile-predict`) accept.

One safetensors file: every weight except the frozen backbone weights that come from the pretrained
file (for Mona: the adapters, the neck and the heads, a few MB to a few tens of MB), with the config,
the classes, the patch grid and the pretrained file's SHA-256 as metadata. Without a pretrained file the
whole state is stored. Official Mona / STAR-MMRotate `.pth` checkpoints load too (weights only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from domainmona.errors import UserError
from domainmona.io import atomic_path

FORMAT = 'domainmona.detector/1'


@dataclass
class DetectorInfo:
    """What `test` needs besides the weights: the config and the patch grid the model was trained on."""

    config_text: str
    classes: tuple[str, ...]
    patch_size: int
    patch_gap: int


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def saved_state(model) -> dict:
    """The detector's state minus the frozen backbone weights that its pretrained file provides."""
    backbone = model.backbone
    skip = {f'backbone.{k}' for k in backbone.frozen_pretrained_keys()} if backbone.weights else set()
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in skip}


def save_detector(model, info: DetectorInfo, path: Path) -> Path:
    from safetensors.torch import save_file

    weights = model.backbone.weights
    metadata = dict(format=FORMAT, config=info.config_text, classes=json.dumps(list(info.classes)),
                    patch_size=str(info.patch_size), patch_gap=str(info.patch_gap),
                    weights_sha256=file_sha256(weights) if weights else '')
    with atomic_path(path) as tmp:
        save_file(saved_state(model), str(tmp), metadata=metadata)
    return path


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework='pt') as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a non-safetensors file
        raise UserError(f"{path}: not a safetensors checkpoint ({exc})") from None


def load_detector(path: Path):
    """(model in eval mode with weights loaded, DetectorInfo) from a checkpoint written by `save_detector`."""
    from mmengine.config import Config
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules
    from safetensors.torch import load_file

    import domainmona.detection.backbone  # noqa: F401  (registers MonaSwinTransformer)

    meta = read_metadata(path)
    if meta.get('format') != FORMAT:
        raise UserError(f"{path}: not a domainmona detector checkpoint (no '{FORMAT}' metadata)")
    register_all_modules()
    cfg = Config.fromstring(meta['config'], file_format='.py')
    weights = cfg.model.backbone.get('weights')
    if weights:
        if not Path(weights).is_file():
            raise UserError(f"{path}: its frozen backbone comes from {weights}, which no longer exists")
        if file_sha256(weights) != meta['weights_sha256']:
            raise UserError(f"{path}: {weights} changed since training (SHA-256 differs)")
    model = MODELS.build(cfg.model)
    model.init_weights()
    load_state_strict(model, load_file(str(path)), path)
    info = DetectorInfo(meta['config'], tuple(json.loads(meta['classes'])), int(meta['patch_size']),
                        int(meta['patch_gap']))
    return model.eval(), info


def load_state_strict(model, state: dict, source: Path) -> None:
    """Load `state` into `model`, refusing any key or shape that does not fit (another backbone, other heads)."""
    own = model.state_dict()
    expected_missing = {f'backbone.{k}' for k in model.backbone.frozen_pretrained_keys()} \
        if model.backbone.weights else set()
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    missing = [k for k in own if k not in state and k not in expected_missing]
    if unexpected or wrong_shape or missing:
        example = (wrong_shape or unexpected or missing)[0]
        raise UserError(f"{source}: checkpoint from another backbone or head ({len(wrong_shape)} shape mismatches, "
                        f"{len(unexpected)} unexpected and {len(missing)} missing weights, e.g. '{example}')")
    model.load_state_dict(state, strict=False)
