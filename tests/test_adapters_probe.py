"""`domainmona adapters probe`: budgets, the settings it measures, real measured rows, one-line refusals."""

import pytest
from typer.testing import CliRunner

from domainmona.adapters import probe
from domainmona.adapters.methods import METHODS
from domainmona.cli import app
from domainmona.errors import UserError

GIB, MIB = 2**30, 2**20


@pytest.mark.parametrize("text, expected", [("8GB", 8 * GIB), ("8g", 8 * GIB), ("7.5GiB", int(7.5 * GIB)),
                                            ("512MB", 512 * MIB), (" 64 kb ", 64 * 1024), ("1000", 1000)])
def test_budgets_in_binary_units(text, expected):
    assert probe.parse_budget(text) == expected


@pytest.mark.parametrize("text", ["eight", "-1GB", "0", "0.1", "8XB", "8 GB GB", "", "nan", "1e3GB"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(UserError, match="--memory-budget"):
        probe.parse_budget(text)


def test_settings_cover_the_requested_switches_and_only_meaningful_ones():
    rows = probe.settings("swin-t", 256, 1, ["mona", "full"], "compare", checkpoint_blocks=True, amp=True)
    mona = [s for s in rows if s.method == "mona"]
    full = [s for s in rows if s.method == "full"]
    assert len(mona) == 8 and len({(s.recompute, s.checkpoint_blocks, s.amp) for s in mona}) == 8
    assert len(full) == 4 and not any(s.recompute for s in full)  # full has no adapter modules to recompute
    plain = probe.settings("swin-t", 256, 1, ["lora"], "off", checkpoint_blocks=False, amp=False)
    assert [(s.recompute, s.checkpoint_blocks, s.amp) for s in plain] == [(False, False, False)]


def test_method_flags_match_the_modules_they_attach():
    """`Method.recomputes` (used for the probe's rows) says whether injection adds recomputing modules."""
    timm = pytest.importorskip("timm")
    from domainmona.adapters import inject
    from domainmona.adapters.modules.recompute import Recomputable

    for name, method in METHODS.items():
        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
                                  embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
        try:
            inject(model, name)
        except UserError:  # a method this family cannot host
            continue
        assert any(isinstance(m, Recomputable) for m in model.modules()) == method.recomputes, name


@pytest.mark.parametrize("args, message", [
    (("unet", 256, 1, ["mona"], 2), "unknown backbone 'unet'"),
    (("swin-t", 250, 1, ["mona"], 2), "multiple of 32"),
    (("swinunetr", 2048, 1, ["mona"], 2), "from 32 to 1024"),
    (("swin-t", 256, 0, ["mona"], 2), "--batch"),
    (("swin-t", 256, 1, ["mona", "prompt"], 2), "unknown adapter method 'prompt'"),
    (("swin-t", 256, 1, [], 2), "no method"),
    (("swin-t", 256, 1, ["mona"], 0), "--steps"),
])
def test_requests_the_probe_cannot_measure_are_refused(args, message):
    with pytest.raises(UserError, match=message):
        probe.check_request(*args)


def test_probe_measures_real_steps_in_fresh_processes():
    pytest.importorskip("mmdet")
    from domainmona.adapters import inject, trainable_report
    from domainmona.adapters.backbones import build_backbone

    requested = probe.settings("micro", 64, 1, ["mona", "fixed"], "on", checkpoint_blocks=False, amp=False, steps=1)
    rows = {r.setting.method: r for r in probe.probe(requested)}
    assert rows.keys() == {"mona", "fixed"} and not any(r.failure for r in rows.values())
    expected = trainable_report(inject(build_backbone("micro"), "mona")).trainable_model_params
    assert rows["mona"].trainable_params == expected > 0 and rows["fixed"].trainable_params == 0
    assert rows["mona"].adapter_file_bytes > 4 * expected and rows["fixed"].adapter_file_bytes < 1024  # metadata
    for row in rows.values():
        assert row.device == "cpu" and row.step_s > 0 and row.step_cpu_s > 0 and row.peak_bytes > 0
    assert rows["mona"].kept_bytes > 0 and rows["fixed"].kept_bytes == 0  # nothing needs gradients in 'fixed'
    # the micro Swin's 0.4M frozen weights are part of a row's peak: at least their bytes
    assert rows["fixed"].peak_bytes >= 4 * sum(p.numel() for p in build_backbone("micro").parameters())


def test_command_prints_the_table_sorted_by_memory_and_what_fits(monkeypatch):
    """The command's own work on measured rows (measuring is tested above): order, budget column and line."""
    asked = []

    def fake_probe(requested):
        asked.extend(requested)
        peaks = {("mona", True): 300 * MIB, ("mona", False): 500 * MIB, ("full", False): 900 * MIB}
        return [probe.Row(s, "cpu", peaks[s.method, s.recompute], 1.0, 1.0, 5, 10, 40, "") for s in requested]

    monkeypatch.setattr(probe, "probe", fake_probe)
    result = CliRunner().invoke(app, ["adapters", "probe", "-b", "micro", "--size", "64", "-m", "full,mona",
                                      "--compare-recompute", "--memory-budget", "0.5GB"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert [(s.method, s.recompute, s.size, s.batch, s.steps) for s in asked] == [
        ("full", False, 64, 1, 2), ("mona", True, 64, 1, 2), ("mona", False, 64, 1, 2)]
    rows = [line.split("│")[1:-1] for line in result.output.splitlines() if line.startswith("│ ")]
    assert [(r[0].strip(), r[1].strip(), r[4].strip(), r[-1].strip()) for r in rows] == [
        ("mona", "on", "300 MB", "yes"), ("mona", "off", "500 MB", "yes"), ("full", "—", "900 MB", "no")]
    assert "fit in 0.5GB: mona (recompute), mona" in result.output
