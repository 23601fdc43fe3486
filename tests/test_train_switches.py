"""Every train command's precision and memory switches: the mixed-precision rule (domainmona.devices) and what it
makes of each command's settings; the detector's float32 box work under autocast (run with the CPU's bf16
autocast: CUDA is not needed to exercise the dtype paths); adapter recompute and block checkpointing reaching
the models."""

import pytest
import torch

from domainmona.detection.amp import amp_optim_wrapper, keep_box_work_in_float32
from domainmona.devices import amp_dtype, grad_scaler, load_scaler_state


@pytest.fixture(params=[True, False], ids=["bf16-gpu", "fp16-gpu"])
def bf16_gpu(request, monkeypatch):
    """A CUDA device's bf16 support, as the GPU would answer (the rule asks nothing else of the device)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: request.param)
    return request.param


def test_the_rule_bf16_else_fp16_on_cuda_float32_elsewhere_or_when_off(bf16_gpu):
    assert amp_dtype("cuda:0") == (torch.bfloat16 if bf16_gpu else torch.float16)
    assert amp_dtype("cuda", enabled=False) is None
    assert amp_dtype("cpu") is None
    assert amp_dtype(torch.device("cpu"), enabled=True) is None


def test_only_fp16_gets_a_loss_scaler_and_a_resume_across_precisions_starts_a_fresh_one():
    device = torch.device("cpu")
    assert not grad_scaler(device, None).is_enabled()
    assert not grad_scaler(device, torch.bfloat16).is_enabled()
    scaler = grad_scaler(device, torch.float16)
    assert scaler.is_enabled()
    load_scaler_state(scaler, {})  # saved by a bf16 or CPU run: nothing to continue, no error
    assert scaler.get_scale() == 2.0 ** 16
    load_scaler_state(scaler, {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                               "growth_interval": 2000, "_growth_tracker": 7})
    assert scaler.get_scale() == 512.0


def test_detection_optim_wrapper(bf16_gpu):
    base = {"type": "OptimWrapper", "optimizer": {"type": "AdamW", "lr": 1e-4}, "clip_grad": {"max_norm": 35}}
    amp = amp_optim_wrapper(base, "cuda")
    assert amp["type"] == "AmpOptimWrapper" and amp["optimizer"] == base["optimizer"]
    assert amp["clip_grad"] == base["clip_grad"]
    assert (amp["dtype"], amp["loss_scale"]) == (("bfloat16", 1.0) if bf16_gpu else ("float16", "dynamic"))
    assert amp_optim_wrapper(base, "cuda", enabled=False) == base
    assert amp_optim_wrapper(base, "cpu") == base


def test_train_config_resolves_amp_from_the_device_and_the_flag(tmp_path, monkeypatch, bf16_gpu):
    import domainmona.devices as devices
    from domainmona.detection.synthetic import SYNTHETIC_CLASSES
    from domainmona.detection.train import TrainOptions, build_train_config

    subsets = [(tmp_path / "images", tmp_path / "annfiles")]
    opts = dict(dataset="synthetic", data=tmp_path, work_dir=tmp_path / "work", backbone="micro",
                classes=SYNTHETIC_CLASSES, patch_size=256, patch_gap=64, adapter="full")
    cpu = build_train_config(TrainOptions(**opts), subsets)
    assert cpu.optim_wrapper.type == "OptimWrapper"
    monkeypatch.setattr(devices, "default_device", lambda: torch.device("cuda", 0))
    gpu = build_train_config(TrainOptions(**opts), subsets)
    assert gpu.optim_wrapper.type == "AmpOptimWrapper"
    assert gpu.optim_wrapper.dtype == ("bfloat16" if bf16_gpu else "float16")
    assert build_train_config(TrainOptions(**opts, amp=False), subsets).optim_wrapper.type == "OptimWrapper"


def test_geo_seg_and_ct_settings_carry_amp():
    from domainmona.errors import UserError
    from domainmona.geo.segmodel import load_settings
    from domainmona.medical.settings import load_settings as ct_settings

    assert load_settings()["amp"] is True and load_settings(amp=False)["amp"] is False
    with pytest.raises(UserError, match="amp must be true or false"):
        load_settings(amp="yes")
    assert ct_settings()["train"]["amp"] is True
    assert ct_settings(train=dict(amp=False))["train"]["amp"] is False


@pytest.mark.parametrize("command", [["train", "dota"], ["train", "star"], ["train", "geo-det"],
                                     ["train", "geo-seg"], ["segment-ct", "train"]])
def test_every_train_command_has_the_precision_and_memory_switches(command, capsys, monkeypatch):
    from domainmona.cli import run

    monkeypatch.setenv("COLUMNS", "200")
    assert run([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--no-amp", "--no-adapter-recompute", "--checkpoint-blocks"))


def _micro_detector_batch():
    """The micro Oriented R-CNN (random weights, seeded) and one 256² training batch with three rotated boxes."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmrotate.structures.bbox import RotatedBoxes

    from domainmona.detection import config as C
    from domainmona.detection.checkpoint import _build
    from domainmona.detection.synthetic import SYNTHETIC_CLASSES

    torch.manual_seed(0)
    cfg = C.build_config("synthetic", "micro", "mona", SYNTHETIC_CLASSES, None, 256)
    model = _build(cfg).train()
    sample = DetDataSample(metainfo=dict(img_shape=(256, 256), ori_shape=(256, 256), pad_shape=(256, 256),
                                         scale_factor=(1.0, 1.0)))
    boxes = torch.tensor([[60.0, 70.0, 40.0, 20.0, 0.3], [150.0, 160.0, 60.0, 30.0, -1.2],
                          [200.0, 60.0, 24.0, 24.0, 0.8]])
    sample.gt_instances = InstanceData(bboxes=RotatedBoxes(boxes), labels=torch.tensor([0, 1, 2]))
    sample.ignored_instances = InstanceData(bboxes=RotatedBoxes(torch.zeros(0, 5)), labels=torch.zeros(0).long())
    image = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return model, dict(inputs=[image], data_samples=[sample])


def _losses(model, data, dtype):
    torch.manual_seed(0)  # the RPN and RoI samplers draw the same proposals in both runs
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        losses = model._run_forward(model.data_preprocessor(data, True), mode="loss")
    return model.parse_losses(losses)


def value(log) -> float:
    return torch.as_tensor(log).detach().item()


def test_detector_trains_under_half_precision_autocast_with_float32_box_work():
    model, data = _micro_detector_batch()
    with pytest.raises(TypeError, match="BFloat16"):  # mmrotate's box decoding goes through numpy
        _losses(model, data, torch.bfloat16)
    keep_box_work_in_float32(keep_box_work_in_float32(model))  # idempotent
    reference, ref_logs = _losses(model, data, None)
    loss, logs = _losses(model, data, torch.bfloat16)
    assert torch.isfinite(loss)
    # bf16 keeps 8 bits of mantissa: the losses agree to a few per cent, the box regression term included
    for key in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"):
        assert value(logs[key]) == pytest.approx(value(ref_logs[key]), rel=0.03, abs=1e-3), key
    loss.backward()
    adapter_grads = [p.grad for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert adapter_grads and all(g is not None and torch.isfinite(g).all() for g in adapter_grads)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())



def test_detection_memory_switches_reach_the_backbone(tmp_path):
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules

    import domainmona.detection.backbone  # noqa: F401
    from domainmona.adapters import adapted_backbones, block_checkpointing
    from domainmona.detection.synthetic import SYNTHETIC_CLASSES
    from domainmona.detection.train import TrainOptions, build_train_config

    register_all_modules()
    subsets = [(tmp_path / "images", tmp_path / "annfiles")]
    opts = dict(dataset="synthetic", data=tmp_path, work_dir=tmp_path / "work", backbone="micro",
                classes=SYNTHETIC_CLASSES, patch_size=256, patch_gap=64, adapter="full")
    for recompute, blocks in ((True, False), (False, True)):
        cfg = build_train_config(TrainOptions(**opts, adapter_recompute=recompute, checkpoint_blocks=blocks), subsets)
        backbone = MODELS.build(cfg.model.backbone)
        assert block_checkpointing(backbone) is blocks
        assert [state.recompute for _, _, state in adapted_backbones(backbone)] == [recompute]


def test_geo_seg_and_ct_memory_switches():
    from domainmona.adapters import block_checkpointing
    from domainmona.errors import UserError
    from domainmona.geo.segmodel import load_settings
    from domainmona.medical.model import assemble
    from domainmona.medical.settings import load_settings as ct_settings

    settings = load_settings(adapter_recompute=False, checkpoint_blocks=True)
    assert (settings["adapter_recompute"], settings["checkpoint_blocks"]) == (False, True)
    with pytest.raises(UserError, match="checkpoint_blocks must be true or false"):
        load_settings(checkpoint_blocks=1)
    ct = ct_settings(model=dict(use_checkpoint=True, feature_size=12), train=dict(adapter_recompute=False))
    assert ct["train"]["adapter_recompute"] is False
    assert block_checkpointing(assemble(ct["model"], 2))
