"""The final detector checkpoint that `train` prints and `test` (and `tile-predict`) accept.

It is the adapter core's adapter file (`save_adapter`: the adapter tensors and `modules_to_save`, the neck and
the heads, with the method, backbone id and a fingerprint of the frozen base weights) plus the
detector's own metadata: the mmengine config, the classes and the patch grid. The frozen backbone comes
from the weights file named in the config, checked against the fingerprint when loading.

Nothing read here runs code: the config is read as data (`parse_config`, not mmengine's `Config.fromstring`,
which executes it as Python), and the checkpoints mmengine reads itself (`--resume`, `init_cfg`) go through
`load_from_local_weights_only` once `install_safe_checkpoint_loader` has run.
"""

from __future__ import annotations

import ast
import json
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from domainmona.errors import UserError
from domainmona.io import atomic_path, load_torch

DETECTOR_KEYS = ('detector_config', 'classes', 'patch_size', 'patch_gap')
SCENES_KEY = 'scenes'  # the metadata key of `DetectorInfo.scenes`
SETTINGS_KEY = 'settings'  # the metadata key of `DetectorInfo.settings`
# What `train dota|star` detectors see: DOTA/STAR patches, 8-bit RGB PNGs read as they are (the config's
# data preprocessor then applies its mean/std). Also what a checkpoint from before domainmona recorded its
# scenes (or an official .pth) is taken to have seen: every such detector was trained on those patches.
RGB_PATCHES = {'bands': [1, 2, 3], 'scene_bands': [3], 'dtypes': ['uint8'], 'stats': None,
               'normalisation': "8-bit RGB as read, then the detector config's mean/std"}
UNRECORDED = ("a detector checkpoint without a record of its training scenes, so taken as trained on 3-band "
              "uint8 RGB patches like every 'train dota|star' detector")


@dataclass
class DetectorInfo:
    """What `test` needs besides the weights: the config and the patch grid the model was trained on."""

    config_text: str
    classes: tuple[str, ...]
    patch_size: int
    patch_gap: int
    # The scenes it was trained on: bands taken, band counts, dtypes, the uint8 stretch (`stats`, None for
    # uint8 scenes) and a word on the normalisation; `tile-predict` refuses scenes unlike them.
    scenes: dict = field(default_factory=lambda: dict(RGB_PATCHES))
    # The training command's resolved settings as plain data (domainmona.settings.plain), as `--print-config`
    # printed them; None for a checkpoint from before they were recorded (or an official .pth).
    settings: dict | None = None

    def metadata(self) -> dict[str, str]:
        extra = {} if self.settings is None else {SETTINGS_KEY: json.dumps(self.settings)}
        return dict(detector_config=self.config_text, classes=json.dumps(list(self.classes)),
                    patch_size=str(self.patch_size), patch_gap=str(self.patch_gap),
                    **{SCENES_KEY: json.dumps(self.scenes)}, **extra)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> "DetectorInfo":
        if any(key not in meta for key in DETECTOR_KEYS):
            raise UserError(f"{path}: an adapter file, but not a detector checkpoint (no detector config inside)")
        try:
            classes, size, gap = json.loads(meta['classes']), int(meta['patch_size']), int(meta['patch_gap'])
        except ValueError:
            classes = size = gap = None
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
                and size is not None and 0 <= gap < size):
            raise UserError(f"{path}: malformed detector metadata (classes, patch_size, patch_gap)")
        return cls(meta['detector_config'], tuple(classes), size, gap, _scenes(meta, path), _settings(meta, path))

    def config(self, path: Path):
        return parse_config(self.config_text, path)


def _settings(meta: dict[str, str], path: Path) -> dict | None:
    """The recorded training settings, None where the checkpoint has none."""
    if SETTINGS_KEY not in meta:
        return None
    try:
        settings = json.loads(meta[SETTINGS_KEY])
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise UserError(f"{path}: malformed detector metadata (settings)")
    return settings


def _scenes(meta: dict[str, str], path: Path) -> dict:
    """The scenes record of a checkpoint's metadata; for one written before it existed, `RGB_PATCHES` with
    a note saying so (`UNRECORDED`)."""
    if SCENES_KEY not in meta:
        return {**RGB_PATCHES, 'note': UNRECORDED}
    try:
        scenes = json.loads(meta[SCENES_KEY])
    except ValueError:
        scenes = None
    if not (isinstance(scenes, dict) and isinstance(scenes.get('bands'), list) and scenes['bands']
            and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in scenes['bands'])
            and all(isinstance(scenes.get(k), list) for k in ('scene_bands', 'dtypes'))):
        raise UserError(f"{path}: malformed detector metadata (its record of the training scenes)")
    return scenes


def detector_scenes(meta: dict[str, str], path: Path) -> dict:
    """What the detector checkpoint at ``path`` with this safetensors ``meta`` was trained on
    (`DetectorInfo.scenes`), read without building it; a one-line error for a file that is no detector
    checkpoint, naming what it is."""
    if any(key not in meta for key in DETECTOR_KEYS):
        what = (f"an adapter file ({meta.get('method', '?')} on {meta.get('backbone', '?')}), not a detector or "
                "geo-seg checkpoint" if 'base_fingerprint' in meta else "neither a detector nor a geo-seg checkpoint")
        raise UserError(f"{path}: {what}")
    return _scenes(meta, path)


def parse_config(text: str, path: Path):
    """The mmengine Config stored in a checkpoint (`key = value` lines of dicts, lists, tuples and
    constants, as `Config.pretty_text` writes them), read as data: anything else is refused."""
    from mmengine.config import Config

    try:
        body = ast.parse(text).body
        values = {}
        for node in body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                raise ValueError(f"line {node.lineno} is not a plain setting")
            values[node.targets[0].id] = _literal(node.value)
    except (SyntaxError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: its detector config is not plain settings ({reason}); refusing to run it") from None
    return Config(values)


def _literal(node: ast.AST):
    """A value made of constants, lists, tuples, `{...}` and `dict(...)`; ValueError for anything else."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict' and not node.args:
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError(f"line {node.lineno}: '**' in dict()")
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise ValueError(f"line {node.lineno}: '**' in a dict")
        return {_literal(key): _literal(value) for key, value in zip(node.keys, node.values, strict=True)}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    try:
        return ast.literal_eval(node)  # numbers (signed), strings, True/False/None
    except ValueError:
        raise ValueError(f"line {node.lineno}: {ast.unparse(node)[:60]!r} is not a plain value") from None


HISTORY_STATISTICS = ('min', 'max', 'current', 'mean')  # HistoryBuffer's statistics methods


def _history_statistic(owner, name: str):
    """`getattr` as mmengine's checkpoints use it: a HistoryBuffer pickles its statistics methods as
    getattr(HistoryBuffer, 'min'), ... A plain `getattr` (allowed by mmengine) reaches any attribute,
    `__globals__` included."""
    from mmengine.logging import HistoryBuffer

    if owner is not HistoryBuffer or name not in HISTORY_STATISTICS:
        raise pickle.UnpicklingError(f"global 'getattr' on {owner!r}, {name!r} is not allowed")
    return getattr(owner, name)


def mmengine_checkpoint_types() -> list:
    """The non-tensor globals in the checkpoints mmengine's Runner writes, as
    torch.serialization.get_unsafe_globals_in_checkpoint lists them for a real `iter_N.pth`: the message
    hub's HistoryBuffer with its statistics methods, and the numpy arrays, scalars and dtypes it holds."""
    import numpy as np
    from mmengine.logging import HistoryBuffer

    return [HistoryBuffer, (_history_statistic, 'builtins.getattr'), np.ndarray, np.dtype,
            np._core.multiarray._reconstruct, np._core.multiarray.scalar,
            *(type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64))]


def load_from_local_weights_only(filename: str | Path, map_location=None) -> dict:
    """mmengine's local checkpoint loader, without code execution (`map_location` is ignored: tensors load
    on the CPU and mmengine moves them)."""
    return load_torch(filename, allow=mmengine_checkpoint_types())


def install_safe_checkpoint_loader() -> None:
    """Make mmengine read local checkpoints with `load_from_local_weights_only`.

    mmengine's own loader (`_safe_torch_load`) retries with `torch.load(weights_only=False)` when the safe
    load fails, and allows `getattr`: a crafted file named by WORK_DIR/last_checkpoint would run its code on
    `--resume`. URLs are never handed to mmengine (see `resume_checkpoint`), so replacing the local scheme
    covers every checkpoint a run reads.
    """
    from mmengine.runner import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only, force=True)


def modules_to_save(model) -> list[str]:
    """What a detector checkpoint holds besides the adapters: the neck and heads, which train fully, and what
    trains whole inside the backbone (domainmona.detection.backbone: a ViT's simple pyramid, the input
    convolution on other than 3 bands)."""
    return ['neck', 'rpn_head', 'roi_head'] + [f'backbone.{name}' for name in model.backbone.modules_to_save()]


def save_detector(model, info: DetectorInfo, path: Path) -> Path:
    """The core's adapter file for `model`, with the detector metadata added."""
    from safetensors.torch import save_file

    from domainmona.adapters.checkpoint import read_adapter, save_adapter

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp_dir:
        tensors, meta = read_adapter(save_adapter(model, Path(tmp_dir) / 'adapter.safetensors',
                                                  modules_to_save(model)))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta | info.metadata())
    return path


def register_modules() -> None:
    """mmrotate's registries filled (and MonaSwinTransformer), mmrotate the default scope: what building a
    detector or only its test pipeline (`--runtime onnx`) needs."""
    from mmrotate.utils import register_all_modules

    import domainmona.detection.backbone  # noqa: F401  (registers MonaSwinTransformer)

    register_all_modules()


def _build(cfg):
    """The detector of `cfg`, initialised (its backbone weights file loaded), without the init log."""
    from mmengine.logging import MMLogger
    from mmrotate.registry import MODELS

    register_modules()
    install_safe_checkpoint_loader()  # a config's init_cfg may name a checkpoint for mmengine to load
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
    """(model in eval mode with its weights, on the default device; DetectorInfo) from a checkpoint written by
    `save_detector`, or from an official Mona / STAR-MMRotate Oriented R-CNN `.pth` (`dataset` then picks the
    classes). mmdet's data preprocessor moves each batch to the model's device."""
    from domainmona.devices import default_device

    model, info = _load_detector(path, dataset)
    return model.to(default_device()), info


def _load_detector(path: Path, dataset: str):
    from domainmona.adapters.checkpoint import load_adapter, read_adapter
    from domainmona.detection.rotated_ops import install_rotated_ops

    install_rotated_ops()
    if path.suffix in ('.pth', '.pt'):
        return load_official_detector(path, dataset)
    _, meta = read_adapter(path)
    info = DetectorInfo.from_metadata(meta, path)
    cfg = info.config(path)
    weights = cfg.model.backbone.get('weights')
    if weights and not Path(weights).is_file():
        raise UserError(f"{path}: its frozen backbone comes from {weights}, which does not exist here")
    model = _build(cfg)
    try:
        load_adapter(model, path)
    except UserError as exc:
        raise UserError(f"checkpoint from another backbone or head: {exc}") from None
    return model.eval(), info


def _registered_swin(tensors: dict) -> str | None:
    """The registered Swin (domainmona.adapters.backbones) whose width and depths the backbone tensors have."""
    import re

    from domainmona.adapters.backbones import backbones

    embed = next((t.shape[0] for k, t in tensors.items() if k.startswith('backbone.patch_embed.proj')), None)
    blocks = {tuple(map(int, m.groups())) for k in tensors
              if (m := re.match(r'backbone\.(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.', k))}
    depths = tuple(1 + max((b for s, b in blocks if s == stage), default=-1) for stage in range(4))
    return next((name for name, spec in backbones(2).items() if spec.family == 'mmdet-swin'
                 and (spec.options['mmdet']['embed_dims'], tuple(spec.options['mmdet']['depths'])) == (embed, depths)),
                None)


def load_official_detector(path: Path, dataset: str):
    """An official Mona Oriented R-CNN checkpoint (Leiyi-Hu/mona or STAR-MMRotate, read with
    weights_only=True): Swin size and class count are read off the tensors, keys remapped by the core."""
    from domainmona.adapters.official import load_official_mona
    from domainmona.adapters.weights import read_state_dict, strip_prefix
    from domainmona.detection import config as C
    from domainmona.detection.classes import DATASETS
    from domainmona.recipes import patch_grid

    tensors = strip_prefix(read_state_dict(path), 'module.')
    backbone = _registered_swin(tensors)
    cls_weight = tensors.get('roi_head.bbox_head.fc_cls.weight')
    if backbone is None or cls_weight is None:
        raise UserError(f"{path}: not an Oriented R-CNN with a registered Swin backbone")
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
    return model.eval(), DetectorInfo(cfg.pretty_text, classes, *patch_grid())
