"""The final detector checkpoint that `train` prints and `test` (and `tile-predict`) accept.

It is the adapter core's adapter file (`save_adapter`: every trainable tensor, i.e. the adapters, the
neck and the heads, with the method, backbone id and a fingerprint of the frozen base weights) plus the
detector's own metadata: the mmengine config, the classes and the patch grid. The frozen backbone comes
from the weights file named in the config, checked against the fingerprint when loading.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from domainmona.errors import UserError
from domainmona.io import atomic_path

DETECTOR_KEYS = ('detector_config', 'classes', 'patch_size', 'patch_gap')


@dataclass
class DetectorInfo:
    """What `test` needs besides the weights: the config and the patch grid the model was trained on."""

    config_text: str
    classes: tuple[str, ...]
    patch_size: int
    patch_gap: int

    def metadata(self) -> dict[str, str]:
        return dict(detector_config=self.config_text, classes=json.dumps(list(self.classes)),
                    patch_size=str(self.patch_size), patch_gap=str(self.patch_gap))

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> "DetectorInfo":
        if any(key not in meta for key in DETECTOR_KEYS):
            raise UserError(f"{path}: an adapter file, but not a detector checkpoint (no detector config inside)")
        return cls(meta['detector_config'], tuple(json.loads(meta['classes'])), int(meta['patch_size']),
                   int(meta['patch_gap']))


def save_detector(model, info: DetectorInfo, path: Path) -> Path:
    """The core's adapter file for `model`, with the detector metadata added."""
    from safetensors.torch import save_file

    from domainmona.adapters.checkpoint import read_adapter, save_adapter

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp_dir:
        tensors, meta = read_adapter(save_adapter(model, Path(tmp_dir) / 'adapter.safetensors'))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta | info.metadata())
    return path


def _build(cfg):
    """The detector of `cfg`, initialised (its backbone weights file loaded), without the init log."""
    from mmengine.logging import MMLogger
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules

    import domainmona.detection.backbone  # noqa: F401  (registers MonaSwinTransformer)

    register_all_modules()
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')  # init_weights logs every parameter's init at INFO
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def load_detector(path: Path, dataset: str = 'dota'):
    """(model in eval mode with its weights, DetectorInfo) from a checkpoint written by `save_detector`,
    or from an official Mona / STAR-MMRotate Oriented R-CNN `.pth` (`dataset` then picks the classes)."""
    from mmengine.config import Config

    from domainmona.adapters.checkpoint import load_adapter, read_adapter

    if path.suffix in ('.pth', '.pt'):
        return load_official_detector(path, dataset)
    _, meta = read_adapter(path)
    info = DetectorInfo.from_metadata(meta, path)
    cfg = Config.fromstring(info.config_text, file_format='.py')
    weights = cfg.model.backbone.get('weights')
    if weights and not Path(weights).is_file():
        raise UserError(f"{path}: its frozen backbone comes from {weights}, which does not exist here")
    model = _build(cfg)
    try:
        load_adapter(model, path)
    except UserError as exc:
        raise UserError(f"checkpoint from another backbone or head: {exc}") from None
    return model.eval(), info


def load_official_detector(path: Path, dataset: str):
    """An official Mona Oriented R-CNN checkpoint (Leiyi-Hu/mona or STAR-MMRotate, read with
    weights_only=True): Swin size and class count are read off the tensors, keys remapped by the core."""
    from domainmona.adapters.official import load_official_mona
    from domainmona.adapters.weights import read_state_dict, strip_prefix
    from domainmona.detection import config as C
    from domainmona.detection.classes import DATASETS

    tensors = strip_prefix(read_state_dict(path), 'module.')
    embed = next((t.shape[0] for k, t in tensors.items() if k.startswith('backbone.patch_embed.proj')), None)
    backbone = {96: 'swin-t', 128: 'swin-b'}.get(embed)
    cls_weight = tensors.get('roi_head.bbox_head.fc_cls.weight')
    if backbone is None or cls_weight is None:
        raise UserError(f"{path}: not an Oriented R-CNN with a Swin-T/B backbone (patch embedding width {embed})")
    keys = [k for k, names in DATASETS.items() if k.startswith(dataset) and len(names) == cls_weight.shape[0] - 1]
    if not keys:
        raise UserError(f"{path}: its head has {cls_weight.shape[0] - 1} classes, no {dataset.upper()} version has")
    classes = DATASETS[keys[0]]
    cfg = C.build_config(keys[0], backbone, 'mona', classes)
    model = _build(cfg)
    report = load_official_mona(model, path)
    if report.missing:
        raise UserError(f"checkpoint from another backbone or head: {path} lacks {len(report.missing)} weights "
                        f"of a {backbone} Oriented R-CNN, e.g. '{report.missing[0]}'")
    return model.eval(), DetectorInfo(cfg.pretty_text, classes, 1024, 200)
