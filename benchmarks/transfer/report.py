"""Aggregate the study's runs into a markdown table with an honest verdict, and a PNG plot: the micro Swin's
study (every method) or, with `setup["study"] == "vit"`, the micro ViT's (pyramids and side networks)."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

from domainmona.io import atomic_path

MONA_GOAL_PCT = 5.0
ROW_FACTS = ("trainable_pct", "trainable_params", "trainable_with_pyramid", "backbone_lr", "adapter", "side",
             "merged_latency")  # the same in every run of a row (runs of the micro Swin's saved study lack some)


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per method: mIoU mean/std per K, trainable % of backbone, mean seconds and peak MB per run."""
    table: dict[str, dict] = {}
    for run in runs:
        row = table.setdefault(run["method"], {"miou": {}, "seconds": [], "peak_mb": [],
                                               **{key: run.get(key) for key in ROW_FACTS}})
        row["miou"].setdefault(run["k"], []).append(run["miou"])
        row["seconds"].append(run["seconds"])
        row["peak_mb"].append(run["peak_mb"])
    for row in table.values():
        row["miou"] = {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in row["miou"].items()}
        row["seconds"] = statistics.mean(row["seconds"])
        row["peak_mb"] = statistics.mean(row["peak_mb"])
    return table


def verdict(table: dict[str, dict], shots: list[int]) -> str:
    mona, full = table["mona"], table["full"]
    wins = [k for k in shots if mona["miou"][k][0] >= full["miou"][k][0]]
    within = mona["trainable_pct"] <= MONA_GOAL_PCT
    reached = within and len(wins) == len(shots)
    lines = [f"**Paper goal (Mona >= full fine-tuning at <= {MONA_GOAL_PCT:.0f}% trainable backbone): "
             f"{'reached' if reached else 'not reached'} here.** Mona trains {mona['trainable_pct']:.2f}% of the "
             f"backbone; its mean mIoU is >= full fine-tuning's at K = {', '.join(map(str, wins)) or 'none'} "
             f"of K = {', '.join(map(str, shots))}."]
    light = [name for name, row in table.items() if row["trainable_pct"] <= MONA_GOAL_PCT]
    for k in shots:
        (m, ms), (f, fs) = mona["miou"][k], full["miou"][k]
        rank = 1 + sum(table[name]["miou"][k][0] > m for name in light)
        lines.append(f"- K={k}: Mona {m:.3f} ± {ms:.3f} vs full {f:.3f} ± {fs:.3f} (difference {m - f:+.3f}); "
                     f"Mona ranks {rank} of the {len(light)} methods training <= {MONA_GOAL_PCT:.0f}% of the backbone.")
    return "\n".join(lines)


def _is_vit(setup: dict) -> bool:
    return setup.get("study") == "vit"


def _table_lines(setup: dict, table: dict[str, dict]) -> list[str]:
    """The table, best row at the largest K first; the ViT study adds the trainable parameters with the pyramid or
    side network (new modules outside the ViT that its share of the backbone leaves out)."""
    shots, vit = setup["shots"], _is_vit(setup)
    head = ["pyramid + method" if vit else "method", "trainable % of the ViT" if vit else "trainable % of backbone",
            *(["trainable params (ViT + pyramid)"] if vit else []), *[f"mIoU K={k}" for k in shots],
            "backbone lr", "s / run", "peak MB", "inference latency × plain"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in sorted(table.items(), key=lambda item: -item[1]["miou"][shots[-1]][0]):
        cells = [method, f"{row['trainable_pct']:.2f}", *([f"{row['trainable_with_pyramid']:,}"] if vit else []),
                 *[f"{row['miou'][k][0]:.3f} ± {row['miou'][k][1]:.3f}" for k in shots],
                 "–" if vit and row["adapter"] == "fixed" else f"{row['backbone_lr']:g}",
                 f"{row['seconds']:.1f}", f"{row['peak_mb']:.0f}",
                 "–" if row["merged_latency"] is None else f"{row['merged_latency']:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _task(setup: dict, rows: str) -> str:
    return (f"Target: {setup['side']}x{setup['side']} semantic segmentation of generated DOTA-style scenes (4 rotated "
            f"object classes never seen in pretraining); K training scenes drawn from a pool of {setup['pool']}, the "
            f"same K scenes for every {rows} at a given seed; mIoU over the 4 object classes on {setup['test']} "
            f"held-out scenes.")


def _timing(setup: dict) -> str:
    return (f"Time is the training steps of one run on one thread; peak MB is the rise of peak RSS during 3 "
            f"training steps in a fresh process (activations, gradients, optimizer state), batch "
            f"{setup['batch_size']}.")


def _latency(setup: dict, plain: str) -> str:
    return ("Inference latency × plain: the model after `prepare_for_inference` (mergeable methods folded into the "
            f"frozen weights, Mona's convs fused) vs {plain} under the same head (run first and last in every "
            f"round), batch 1, CPU time of one thread, median of {setup.get('latency_rounds', '?')} interleaved rounds.")


def markdown(setup: dict, table: dict[str, dict]) -> str:
    return (_vit_markdown if _is_vit(setup) else _swin_markdown)(setup, table)


def _swin_markdown(setup: dict, table: dict[str, dict]) -> str:
    shots = setup["shots"]
    return "\n".join([
        "# Few-shot transfer study: every adapter method on a source-pretrained micro Swin", "",
        f"Measured {setup['date']} on {setup['machine']}; whole run {setup['wall_seconds'] / 60:.1f} min. "
        f"Produced by `benchmarks/transfer_study.py` (see its docstring for the task).", "",
        f"Source: the shipped micro Swin (`domainmona/assets/micro_swin.safetensors`, 1.43M params), pretrained "
        f"on a generated classification + orientation task. {_task(setup, 'method')} Budget for every method: "
        f"{setup['steps']} AdamW steps (wd 0.05, cosine to 0), batch {setup['batch_size']} with random quarter "
        f"turns and flips, the same light segmentation head (lr {setup['head_lr']:g}, trains fully); {setup['seeds']} seed(s). "
        f"{_timing(setup)}", "",
        *_table_lines(setup, table), "",
        _latency(setup, "the plain backbone"),
        *([f"Not defined for this backbone (refused by `inject`): "
           + "; ".join(f"`{m}`: {reason}" for m, reason in setup["not_defined"].items()), ""]
          if setup.get("not_defined") else [""]),
        verdict(table, shots), "",
        f"What would change it: with {setup['seeds']} seeds and {setup['test']} test scenes most gaps are within one "
        f"standard deviation (more seeds would separate them); the budget is small ({setup['steps']} steps); the lr is set per family (full / partial: "
        f"{setup['base_weight_lr']['full']:g} on pretrained weights; PEFT: {setup['peft_lr']:g}, after a 2-point check "
        "of fixed / Mona / full at K=5), not swept per method; the micro Swin's source pretraining "
        "is minutes of CPU on a synthetic task, far weaker than ImageNet-22k, and the paper's gains come at "
        "Swin-B/L scale with full schedules. The smallest class (vehicle, ~11x6 px at 96 px) is hard for every method. A fair replication needs a real pretrained Swin-T/B, a per-method "
        "lr sweep and longer schedules on a GPU.", ""])


def _vit_verdict(table: dict[str, dict], shots: list[int]) -> list[str]:
    """Mona in the ViT vs full fine-tuning (both under the simple pyramid), then each frozen-ViT side network vs
    the frozen ViT's simple pyramid and vs full fine-tuning."""
    def one(adapter: str, side: str | None = None) -> tuple[str, dict]:
        return next((name, row) for name, row in table.items()
                    if row["adapter"] == adapter and (side is None or row["side"] == side))

    def mean(row: dict, k: int) -> str:
        return f"{row['miou'][k][0]:.3f} ± {row['miou'][k][1]:.3f}"

    (full_name, full), (mona_name, mona) = one("full"), one("mona")
    (frozen_name, frozen) = one("fixed", "simple")
    sides = [(name, row) for name, row in table.items() if row["adapter"] == "fixed" and row["side"] != "simple"]
    wins = [k for k in shots if mona["miou"][k][0] >= full["miou"][k][0]]
    lines = [f"**Mona in the ViT (`{mona_name}`, {mona['trainable_pct']:.2f}% of the ViT) vs full fine-tuning "
             f"(`{full_name}`):** Mona's mean mIoU is >= full fine-tuning's at K = {', '.join(map(str, wins)) or 'none'} "
             f"of K = {', '.join(map(str, shots))}."]
    lines += [f"- K={k}: Mona {mean(mona, k)} vs full {mean(full, k)} (difference "
              f"{mona['miou'][k][0] - full['miou'][k][0]:+.3f})." for k in shots]
    lines += ["", f"**Frozen ViT: side networks vs the simple pyramid (`{frozen_name}`) and vs full fine-tuning:**"]
    for k in shots:
        parts = [f"{name} {mean(row, k)} ({row['miou'][k][0] - frozen['miou'][k][0]:+.3f} vs the frozen simple "
                 f"pyramid, {row['miou'][k][0] - full['miou'][k][0]:+.3f} vs full)" for name, row in sides]
        lines.append(f"- K={k}: frozen simple pyramid {mean(frozen, k)}; " + "; ".join(parts) + ".")
    return lines


def _vit_markdown(setup: dict, table: dict[str, dict]) -> str:
    recipe = setup["pretraining"]
    settings = json.loads(recipe["settings"])
    vit_params = next(row["trainable_params"] for row in table.values() if row["adapter"] == "full")
    sides = ", ".join(f"`{name}` trains {row['trainable_with_pyramid'] / 1e6:.2f}M" for name, row in table.items()
                      if row["adapter"] == "fixed" and row["side"] != "simple")
    options = "; ".join(f"`{name}`: {row['side_cfg'] or row['method_cfg']}" for name, row in setup["rows"].items()
                        if row["side_cfg"] or row["method_cfg"])
    return "\n".join([
        "# Few-shot transfer study: pyramids and side networks on a source-pretrained micro ViT", "",
        f"Measured {setup['date']} on {setup['machine']}; whole run {setup['wall_seconds'] / 60:.1f} min. "
        f"Produced by `benchmarks/transfer_study.py --vit` (see its docstring).", "",
        f"Source: the shipped micro ViT (`micro-vit`, `domainmona/assets/micro_vit.safetensors`: timm ViT/16, width 96, "
        f"12 blocks, 3 heads, 1.42M params), pretrained by `{recipe['produced_by']}` on the micro Swin's generated "
        f"classification + orientation task at {settings['tile']} px ({settings['iters']} steps of "
        f"{settings['batch_size']} tiles, final training accuracy {recipe['final_train_accuracy']}). "
        f"{_task(setup, 'row')} The K scenes of each (K, seed) are also the micro Swin study's "
        "(`transfer_study.md`). Rows: what makes the pyramid a dense head needs from the ViT's stride-16 tokens "
        "(ViTDet's simple pyramid on the last block, or a side network beside the frozen ViT: HST, ViT-CoMer, "
        "`domainmona.adapters.side`), and the adapter method in the ViT (`full`: fine-tuned, `fixed`: frozen; HST "
        f"also tunes the ViT's LayerNorms). Options: {options} (see `VIT_ARMS`). Budget for every row: "
        f"{setup['steps']} AdamW steps (wd 0.05, cosine to 0), batch {setup['batch_size']} with random quarter "
        f"turns and flips, the same light segmentation head (lr {setup['head_lr']:g}) on the four maps; the pyramid "
        f"or side network and HST's LayerNorms train at {setup['peft_lr']:g}, the ViT's weights under `full` at "
        f"{setup['base_weight_lr']['full']:g}, Mona at {setup['peft_lr']:g}; {setup['seeds']} seed(s). "
        f"{_timing(setup)}", "",
        *_table_lines(setup, table), "",
        "Trainable % of the ViT: its own trainable parameters (adapters and tuned LayerNorms included) over its "
        f"{vit_params:,}; trainable params (ViT + pyramid) adds the simple pyramid or side network (the head's are in no "
        "column). " + _latency(setup, "the plain micro ViT with the simple pyramid (what `simple + full` runs at "
                                     "inference)"), "",
        *_vit_verdict(table, setup["shots"]), "",
        f"What would change it: with {setup['seeds']} seeds and {setup['test']} test scenes most gaps are within one "
        f"standard deviation; the budget is small ({setup['steps']} steps) and the lrs are the micro Swin study's, "
        "not swept per row. At this scale the side networks are not side-sized: beside the ViT's "
        f"{vit_params / 1e6:.2f}M parameters, {sides} (HST's preset trains 0.77M beside ViT-B's 86M); and the 96 px "
        "scenes give the ViT a 6x6 token grid (ViT-CoMer's "
        "stride-32 level is 3x3, the smallest class ~11x6 px is under one patch), where the papers run at 512-1024 "
        "px. Both side networks also see the image through their own convolution stem at strides 4-32 (HST's stem, "
        "ViT-CoMer's spatial prior), which the simple pyramid lacks; at a 6x6 grid some of their gain may come "
        "from that stem rather than from reading the frozen ViT (no stem-only row separates the two). The micro ViT's source pretraining is minutes of CPU on a synthetic task, far from MAE/ImageNet "
        "pretraining. A fair comparison needs a real pretrained ViT-B, full-size inputs and schedules on a GPU.", ""])


def plot(path: Path, setup: dict, table: dict[str, dict]) -> None:
    """mIoU vs K per row, and mIoU at the largest K vs what trains: the share of the backbone (micro Swin), or the
    trainable parameters with the pyramid or side network (micro ViT: the frozen rows differ only there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots, vit = setup["shots"], _is_vit(setup)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    others = (f"C{i}" for i in itertools.cycle((0, 1, 2, 4, 5, 6, 7, 8, 9)))  # red (C3) is Mona's alone
    for method, row in table.items():
        mona = (row["adapter"] if vit else method) == "mona"
        means = [row["miou"][k][0] for k in shots]
        stds = [row["miou"][k][1] for k in shots]
        style = dict(linewidth=2.5, color="crimson") if mona else dict(linewidth=1, alpha=0.8, color=next(others))
        left.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=method, **style)
        if vit:
            share, name = row["trainable_with_pyramid"], method
        else:  # `fixed` trains 0%: drawn at the left edge of the log axis
            share, name = max(row["trainable_pct"], 0.05), method if row["trainable_pct"] else f"{method} (0%)"
        right.scatter(share, row["miou"][shots[-1]][0], color=style["color"])
        right.annotate(name, (share, row["miou"][shots[-1]][0]), fontsize=8)
    left.set(xscale="log", xticks=shots, xticklabels=[str(k) for k in shots], xlabel="training scenes (K)",
             ylabel="target mIoU", title="few-shot transfer (mean ± std over seeds)")
    left.legend(fontsize=7, ncol=2)
    if vit:
        right.set(xscale="log", xlabel="trainable parameters, ViT + pyramid or side network (log)",
                  ylabel=f"mIoU at K={shots[-1]}", title="accuracy vs trainable parameters")
    else:
        right.set(xscale="log", xlabel="trainable % of backbone (log)", ylabel=f"mIoU at K={shots[-1]}",
                  title="accuracy vs trainable share")
        right.axvline(MONA_GOAL_PCT, color="grey", linestyle=":")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_results(stem: Path, setup: dict, runs: list[dict]) -> None:
    table = summarise(runs)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(setup, table))
    plot(stem.with_suffix(".png"), setup, table)
