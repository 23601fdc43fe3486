"""Source -> target adaptation of a shipped whole CT network: full fine-tuning vs Mona, LoRA, Conv-Adapter.

Issue 27's evidence: the decoder trained or adapted, on K = 1 / 3 / 5 target cases.

Source: a whole network shipped in domainmona/assets/ (`domainmona.medical.pretrain_source`), pretrained on the
generated source organs. Target: the generated target organ (`synthetic.write_target_dataset`), which the source
network never saw: a pool of POOL cases, from which each (K, seed) draws its K training cases (the same for every
row: paired), and HELD_OUT held-out cases. Each run is a fresh `domainmona segment-ct train --pretrained <source>`
process on one thread, with the ct-demo recipe's settings and the same budget for every row and every K
(--steps steps of one 64^3 patch: ceil(steps / K) epochs of K cases); validation runs once, after the last step,
so best.pt is the last epoch and no choice is made on the held-out cases. --jobs runs go side by side. Dice: that validation (mean foreground Dice of the held-out
cases). Peak memory: the process's VmHWM. Adapter file: `best_adapter.safetensors` against the run's `best.pt`.
Step time: one training step of each row (the train loop's own step on the same target patch), CPU seconds in
this process, rows interleaved.
Writes benchmarks/results/ct_adapt.{md,json} (`--quick`: ct_adapt_quick.*, a smoke run).

    .venv/bin/python benchmarks/ct_adapt.py [--quick] [--network swinunetr] [--seeds 3] [--steps 30]
                                            [--jobs 2] [--threads 1] [--from-json RESULTS.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from bench_adapters import interleaved
from report import Journal, machine, study_arguments, write_markdown

from domainmona.io import atomic_path

RESULTS = Path(__file__).resolve().parent / "results"
POOL, HELD_OUT = 8, 4  # target cases: the pool K cases are drawn from, and the held-out cases
TARGET_SEED = 300  # the target task's generator seed (the source networks' data used 100)
SHOTS = (1, 3, 5)
STEP_ROUNDS = 3  # interleaved timing rounds, after one warm-up step per row
# Adapting a whole pretrained network: the CT demo's 1e-2 (for a decoder trained from scratch) sends Mona's and
# LoRA's decoder adapters to background-only predictions within 10 steps; at 1e-3 every row learns (trial runs).
LR = 1e-3
GOALS = {"file_pct": 5.0, "step_ratio": 0.8, "dice_gap": 0.02}
MONA = ("inner_dim=16",)  # the ct-demo recipe's Mona (its default 64 is wider than every decoder stage here)


@dataclass(frozen=True)
class Row:
    """One way to adapt the source network: `segment-ct train` flags. `trained`: False for a row measured for
    its file, memory and step time alone (one step, no Dice)."""

    label: str
    adapter: str
    decoder: str | None = None
    options: tuple[str, ...] = ()
    trained: bool = True

    def flags(self) -> list[str]:
        flags = ["--adapter", self.adapter] + (["--decoder", self.decoder] if self.decoder else [])
        return flags + [arg for option in self.options for arg in ("--adapter-opt", option)]


ROWS = (Row("full fine-tuning", "none"),
        Row("mona, decoder train", "mona", "train", MONA, trained=False),
        Row("mona, decoder adapt", "mona", "adapt", MONA),
        Row("lora rank 8, decoder adapt", "lora", "adapt", ("rank=8",)),
        Row("lora rank 64 (default), decoder adapt", "lora", "adapt", trained=False),
        Row("conv-adapter, decoder adapt", "conv-adapter", "adapt", ("reduction=4",)))  # 8 divides no width 12


def write_task(work: Path, cases: int) -> tuple[Path, list[dict]]:
    """The target task (`cases` generated cases: the pool, then the held-out ones) and its datalist entries."""
    from domainmona.medical.synthetic import write_target_dataset

    task = write_target_dataset(work / "target", cases=cases, seed=TARGET_SEED)
    return task, json.loads((task / "dataset.json").read_text())["training"]


def write_datalist(task: Path, entries: list[dict], pool: int, k: int, seed: int) -> Path:
    """The K training cases of (K, seed), drawn from the first `pool` cases; the others validate (held out)."""
    from domainmona.medical.synthetic import TARGET_LABEL_NAMES

    chosen = sorted(np.random.default_rng([k, seed]).choice(pool, k, replace=False).tolist())
    path = task / f"k{k}_seed{seed}.json"
    path.write_text(json.dumps({"labels": TARGET_LABEL_NAMES, "training": [entries[i] for i in chosen],
                                "validation": entries[pool:]}))
    return path


def epochs_for(steps: int, k: int) -> int:
    """Whole epochs of the K cases that make at least `steps` steps."""
    return math.ceil(steps / k)


def write_config(path: Path, network: str, epochs: int, seed: int, lr: float) -> Path:
    """The ct-demo recipe's settings over the source network's sizes, `lr` for every trained tensor (adapters
    included), `epochs` epochs, validation after the last only, the training seed `seed`; the method comes from
    each row's flags."""
    from domainmona.medical.demo import demo_settings
    from domainmona.medical.pretrain_source import source_settings
    from domainmona.recipes import load_recipe

    settings = demo_settings(load_recipe("ct-demo"), model=network, adapter="none")
    settings["model"].update(source_settings(network))
    settings["train"].update(max_epochs=epochs, val_every=epochs, seed=seed, val_max=HELD_OUT, lr=lr, adapter_lr=lr)
    path.write_text(yaml.safe_dump(settings))
    return path


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would count the parent's peak across fork + exec)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def cli_child(usage: Path, argv: list[str]) -> None:
    """Run `domainmona ARGV` in this process, then write its peak memory and CPU seconds to `usage`."""
    from domainmona.cli import run

    code = run(argv)
    usage.write_text(json.dumps({"peak_mb": peak_rss_mb(), "cpu_s": time.process_time()}))
    sys.exit(code)


class Refused(Exception):
    """`segment-ct train` refused the row in one line (e.g. a method the network's families do not define)."""


def run_row(row: Row, k: int, seed: int, network: str, datalist: Path, config: Path, work: Path,
            threads: int) -> dict:
    """One fresh `segment-ct train` process: held-out Dice, peak memory, CPU seconds and file sizes."""
    from domainmona.medical.pretrain_source import source_network

    out = work / f"{row.adapter}-{row.decoder}-{'-'.join(row.options)}-k{k}-s{seed}"
    argv = ["segment-ct", "train", "--data", str(datalist), "--work-dir", str(out / "run"), "--config", str(config),
            "--pretrained", str(source_network(network)), "--gpus", "0", *row.flags()]
    log, usage = out / "log.txt", out / "usage.json"
    out.mkdir(parents=True)
    with log.open("w") as stream:
        done = subprocess.run([sys.executable, __file__, "--cli-child", str(usage), *argv], stdout=stream,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    refusal = [line for line in log.read_text().splitlines() if line.startswith("error: ")]
    if done.returncode == 2 and refusal:  # a method the network does not define: the CLI's one line
        raise Refused(refusal[-1].removeprefix("error: "))
    if done.returncode:
        raise RuntimeError(f"domainmona {' '.join(argv)} failed:\n{log.read_text()[-3000:]}")
    checkpoints = out / "run" / "checkpoints"
    adapter_file = checkpoints / "best_adapter.safetensors"
    history = json.loads((out / "run" / "metrics.json").read_text())
    run = {"row": row.label, "k": k, "seed": seed, **json.loads(usage.read_text()), "epochs": len(history),
           "dice": history[-1]["val_dice"], "checkpoint_mb": (checkpoints / "best.pt").stat().st_size / 1e6,
           "file_mb": adapter_file.stat().st_size / 1e6 if adapter_file.exists() else None}
    shutil.rmtree(out / "run")  # checkpoints of tens of MB per run
    print(f"K={k} seed {seed} {row.label}: Dice {run['dice']:.3f}, {run['cpu_s']:.0f} CPU s, {run['peak_mb']:.0f} MB",
          flush=True)
    return run


def attempt(row: Row, *args, refused: dict[str, str]) -> list[dict]:
    """`run_row`'s run as a list, or none when the CLI refuses the row (its line kept in `refused`)."""
    try:
        return [run_row(row, *args)]
    except Refused as exc:
        refused[row.label] = str(exc)
        print(f"{row.label}: refused: {exc}", flush=True)
        return []


def step_costs(rows: tuple[Row, ...], network: str, datalist: Path, config: Path, rounds: int) -> dict[str, dict]:
    """Per row: CPU seconds of one training step (the loop's own step, `train._train_epoch`, on one target patch
    from the loop's own loader), `rounds` interleaved rounds after a warm-up; and the trainable parameters."""
    from domainmona.adapters import adapted_backbones, set_adapter_recompute
    from domainmona.devices import grad_scaler
    from domainmona.medical.data import load_split
    from domainmona.medical.model import assemble, optimizer_groups
    from domainmona.medical.pretrain_source import source_network
    from domainmona.medical.settings import decoder_mode, resolve_settings
    from domainmona.medical.train import Runtime, _loaders, _train_epoch
    from domainmona.settings import plain

    cpu, source = torch.device("cpu"), source_network(network)
    split = load_split(datalist)
    runners, trainable, batch = {}, {}, None
    for row in rows:
        settings = plain(resolve_settings(config, row.options, model={"adapter": row.adapter, "decoder": row.decoder}))
        batch = batch or [next(iter(_loaders(split, settings, Runtime(cpu))[0]))]  # the same patch for every row
        settings["model"]["decoder"] = decoder_mode(settings["model"], source)
        train = settings["train"]
        model = assemble(settings["model"], split.num_classes, pretrained=source, roi=train["roi"])
        if adapted_backbones(model):
            set_adapter_recompute(model, train["adapter_recompute"])
        optimizer = torch.optim.AdamW(optimizer_groups(model, train["lr"], train["adapter_lr"]),
                                      weight_decay=train["weight_decay"])
        runners[row.label] = (lambda model=model, optimizer=optimizer, batch=batch, clip=train["grad_clip"]:
                              list(_train_epoch(model, batch, optimizer, grad_scaler(cpu, None), clip, None, cpu)))
        trainable[row.label] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    times = interleaved(runners, rounds)
    return {label: {"step_s": statistics.median(times[label]), "step_times": times[label],
                    "trainable": trainable[label]} for label in runners}


def summarise(rows: tuple[Row, ...], runs: list[dict], costs: dict[str, dict], shots: list[int]) -> list[dict]:
    """Per row: Dice mean/std per K over seeds, peak MB (max over its runs), file and checkpoint MB, step cost."""
    table = []
    full = costs[rows[0].label]["step_s"]
    for row in rows:
        mine = [run for run in runs if run["row"] == row.label]
        dice = {str(k): [run["dice"] for run in mine if run["k"] == k] for k in shots} if row.trained else {}
        table.append({**asdict(row), **costs[row.label], "step_ratio": costs[row.label]["step_s"] / full,
                      "dice": {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
                               for k, v in dice.items() if v},  # (mean, std, seeds); none with --partial
                      "peak_mb": max(run["peak_mb"] for run in mine), "file_mb": mine[0]["file_mb"],
                      "checkpoint_mb": mine[0]["checkpoint_mb"], "flags": " ".join(row.flags())})
    return table


def goal_lines(table: list[dict], shots: list[int]) -> list[str]:
    """Each goal, for each adapter row: met or not, with the number."""
    full, k = table[0], max(shots)
    lines = [f"Goals (issue 27), each adapter row against full fine-tuning; Dice at K = {k}:", ""]
    for row in table[1:]:
        pct = 100 * row["file_mb"] / row["checkpoint_mb"]
        checks = [(pct <= GOALS["file_pct"], f"file {pct:.1f}% of its checkpoint (goal <= {GOALS['file_pct']:g}%)"),
                  (row["step_ratio"] <= GOALS["step_ratio"],
                   f"step {row['step_ratio']:.2f}x full (goal <= {GOALS['step_ratio']}x)")]
        if str(k) in row["dice"] and str(k) in full["dice"]:
            gap = row["dice"][str(k)][0] - full["dice"][str(k)][0]
            checks.append((gap >= -GOALS["dice_gap"], f"Dice {gap:+.3f} vs full (goal >= -{GOALS['dice_gap']})"))
        else:
            checks.append((None, "Dice not measured (file, memory and step time only)"))
        shown = "; ".join(f"{text}: {'met' if ok else 'not met' if ok is False else '-'}" for ok, text in checks)
        lines.append(f"- **{row['label']}**: {shown}")
    return lines


def table_lines(table: list[dict], shots: list[int], seeds: int) -> list[str]:
    """The markdown table, one line per row (the README's CT section shows the same); a Dice cell of fewer
    seeds than asked (a --partial report) says how many."""

    def dice(row: dict, k: int) -> str:
        if str(k) not in row["dice"]:
            return "-"
        mean, std, *n = row["dice"][str(k)]  # results written before --partial hold (mean, std)
        n = n[0] if n else seeds
        return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "") + (f" (n={n})" if n < seeds else "")

    lines = ["| row | trainable params | " + " | ".join(f"Dice K={k}" for k in shots)
             + " | CPU s / step | × full | peak MB | adapter file MB | % of checkpoint |",
             "|---|---:|" + "---:|" * len(shots) + "---:|---:|---:|---:|---:|"]
    for row in table:
        file = (f"{row['file_mb']:.2f} | {100 * row['file_mb'] / row['checkpoint_mb']:.1f}%" if row["file_mb"]
                else f"- (whole network: best.pt {row['checkpoint_mb']:.2f}) | 100%")
        lines.append(f"| {row['label']} | {row['trainable']:,} | " + " | ".join(dice(row, k) for k in shots)
                     + f" | {row['step_s']:.2f} | {row['step_ratio']:.2f} | {row['peak_mb']:.0f} | {file} |")
    return lines


def report(stem: Path, setup: dict, table: list[dict]) -> None:
    """ct_adapt.md: setup, the table, each goal met or not, what would change it."""
    shots, recipe = setup["shots"], setup["source_recipe"]
    seeds = setup["seeds"]
    epochs = " / ".join(str(epochs_for(setup["steps"], k)) for k in shots)
    steps = " / ".join(str(epochs_for(setup["steps"], k) * k) for k in shots)
    lines = [
        f"# CT adapters over a whole pretrained {setup['network']}: source -> target, K = "
        f"{' / '.join(map(str, shots))}",
        "",
        f"Written by `benchmarks/ct_adapt.py` on {setup['date']}, {setup['machine']}, {setup['threads']} thread(s) "
        f"per run (OMP_NUM_THREADS), torch {setup['torch']}; whole run {setup['minutes']:.1f} min. Command: "
        f"`{setup['command']}`.",
        "",
        f"- **Source**: `domainmona/assets/{setup['source']}`, a whole {setup['network']} "
        f"({recipe['parameters']:,} parameters, `{json.dumps(recipe['network'])}`) pretrained by "
        f"`{recipe['produced_by']}` on the generated source organs "
        f"({', '.join(v for k, v in recipe['classes'].items() if k != '0')}; source Dice {recipe['source_dice']}).",
        f"- **Target**: the generated target organ (`synthetic.write_target_dataset`, seed {TARGET_SEED}), "
        f"never seen in pretraining; the source head's {len(recipe['classes'])} classes become 2 (re-initialised "
        f"head). Pool of {setup['pool']} case(s); each (K, seed) draws its K training cases from it, the same for "
        f"every row (paired); {setup['held_out']} held-out case(s).",
        f"- **Budget, the same for every row and about the same for every K**: {setup['steps']} steps of one 64^3 "
        f"patch (batch 1) at least, as whole epochs of the K cases: {epochs} epochs, {steps} steps at K = "
        f"{' / '.join(map(str, shots))}; "
        f"`pipelines/ct-demo.yaml`'s settings but the lr: {setup['lr']:g} for every row and every trained tensor "
        f"(AdamW, weight decay {setup['weight_decay']:g}, cosine per epoch), gradient clip 1, no intensity "
        f"augmentation, Mona inner dim 16; {seeds} seed(s)"
        + (" (a smoke run)" if setup["quick"] else " (**fewer than the 3 asked**)" if seeds < 3 else "")
        + ". Validation runs once, after the last step: no checkpoint is chosen on the held-out cases."
        + (f" **Partial report**: {setup['finished_runs']} of the {setup['planned_runs']} training runs had "
           "finished (`--partial`); a cell of fewer seeds says how many (n=), '-' has none yet; the whole study "
           "resumes from its journal (`benchmarks/results/ct_adapt.runs.jsonl`)." if setup.get("partial") else ""),
        "- **Dice**: `segment-ct train`'s validation, mean foreground Dice over the held-out cases (sliding window, "
        "preprocessed space), mean ± std over seeds (no std with one seed).",
        f"- **CPU s / step**: one training step of each row in one process (the train loop's own step on one "
        f"target patch, {setup['threads']} thread), median of {setup['step_rounds']} interleaved rounds after a "
        "warm-up step; × full: over full fine-tuning's. **Peak MB**: VmHWM of the whole `segment-ct train` "
        "process (Python, torch, MONAI and the cached volumes included), the largest of its runs. **Adapter file**: "
        "`best_adapter.safetensors` (what trains: adapters, the head, a trained decoder) and its share of the "
        "run's `best.pt`, as `segment-ct train` prints it.",
        "",
        *table_lines(table, shots, seeds),
        "",
        "Rows (flags after `segment-ct train --data ... --pretrained <source> --config <ct-demo settings>`): "
        + "; ".join(f"{row['label']}: `{row['flags']}`" for row in table) + ".",
        "",
        *goal_lines(table, shots),
        "",
        *([f"Not defined for {setup['network']}, refused by `segment-ct train` in one line: "
           + "; ".join(f"{label}: \"{line}\"" for label, line in setup["refused"].items()), ""]
          if setup["refused"] else []),
        "What would change it: " + CAVEAT,
    ]
    write_markdown(stem.with_suffix(".md"), lines)
    print("\n".join(table_lines(table, shots, seeds)))


def main() -> None:
    if sys.argv[1:2] == ["--cli-child"]:  # one training run, in the fresh process run_row starts
        cli_child(Path(sys.argv[2]), sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="swinunetr", choices=("swinunetr", "segresnet"))
    parser.add_argument("--quick", action="store_true", help="smoke run: K=1, 1 seed, 1 step, 1 held-out case, "
                        "1 timing round")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run, at least (whole epochs)")
    parser.add_argument("--jobs", type=int, default=2, help="training runs side by side")
    parser.add_argument("--lr", type=float, default=LR, help="lr of every row (adapters and head included)")
    parser.add_argument("--partial", action="store_true", help="report the journal's finished training runs "
                        "without starting the others (their cells '-', fewer seeds marked n=)")
    args = study_arguments(parser, lambda stem, saved: report(stem, saved["setup"], saved["table"]))
    if args is None:
        return
    from domainmona.medical.demo import demo_settings
    from domainmona.medical.pretrain_source import source_network, source_recipe
    from domainmona.recipes import load_recipe

    torch.set_num_threads(args.threads)
    shots, seeds, steps, rounds = ((1,), 1, 1, 1) if args.quick else (SHOTS, args.seeds, args.steps, STEP_ROUNDS)
    pool, held_out = (1, 1) if args.quick else (POOL, HELD_OUT)
    started = time.perf_counter()
    stem = RESULTS / ("ct_adapt_quick" if args.quick else "ct_adapt")
    runs, refused = [], {}
    with tempfile.TemporaryDirectory(prefix="ct-adapt-") as tmp:
        work = Path(tmp)
        task, entries = write_task(work, pool + held_out)
        jobs = []
        for k in sorted(shots, reverse=True):  # the goals are read at the largest K: its cells first
            for seed in range(seeds):
                datalist = write_datalist(task, entries, pool, k, seed)
                config = write_config(work / f"k{k}_seed{seed}.yaml", args.network, epochs_for(steps, k), seed,
                                      args.lr)
                jobs += [(row, k, seed, args.network, datalist, config, work, args.threads)
                         for row in ROWS if row.trained]
        journal = Journal(stem.with_suffix(".runs.jsonl"), {"steps": steps, "lr": args.lr, "threads": args.threads},
                          key=lambda run: (run["row"], run["k"], run["seed"]))
        runs += journal.done
        todo = [] if args.partial else [job for job in jobs if (job[0].label, job[1], job[2]) not in journal.keys]
        print(f"{len(jobs) - len(todo)} of {len(jobs)} training runs done before (journal {journal.path.name})")
        with ThreadPoolExecutor(args.jobs) as pool_of_runs:  # each run is its own process
            for done in pool_of_runs.map(lambda job: journal.add(attempt(*job, refused=refused)), todo):
                runs += done
        one_case = write_datalist(task, entries, pool, 1, 0)
        one_step = write_config(work / "one_step.yaml", args.network, 1, 0, args.lr)
        for row in ROWS:
            if not row.trained:
                runs += attempt(row, 1, 0, args.network, one_case, one_step, work, args.threads, refused=refused)
        rows = tuple(row for row in ROWS if row.label not in refused)
        costs = step_costs(rows, args.network, one_case, one_step, rounds)
    train = demo_settings(load_recipe("ct-demo"), model=args.network)["train"]
    setup = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": f"{machine()} (shared; load average {os.getloadavg()[0]:.1f} at the end)",
             "threads": args.threads, "quick": args.quick, "torch": torch.__version__, "network": args.network,
             "source": source_network(args.network).name, "source_recipe": source_recipe(args.network),
             "shots": list(shots), "seeds": seeds, "steps": steps, "jobs": args.jobs, "pool": pool,
             "held_out": held_out,
             "step_rounds": rounds, "lr": args.lr, "weight_decay": train["weight_decay"],
             "command": " ".join([".venv/bin/python benchmarks/ct_adapt.py", *sys.argv[1:]]),
             "minutes": (time.perf_counter() - started) / 60, "refused": refused, "partial": args.partial,
             "planned_runs": len(jobs),
             "finished_runs": sum(run["row"] in {row.label for row in ROWS if row.trained} for run in runs)}
    table = summarise(rows, runs, costs, list(shots))
    with atomic_path(stem.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"setup": setup, "table": table, "runs": runs}, indent=1))
    if not args.partial:
        journal.path.unlink()  # its runs are in the .json now
    report(stem, setup, table)


CAVEAT = ("the budget. At 30 steps and lr 1e-3 every row is at the very start of learning a new organ under a "
          "re-initialised head: no run scored above 0.11, and Mona's seed-2 runs predicted background only at every "
          "K. So the Dice goal, read 'met' for Mona and LoRA rank 8, is within the noise of the seeds and not "
          "settled. In trial runs at the CT demo's lr 1e-2 (K = 5, one seed), full fine-tuning reached 0.06 / 0.34 "
          "/ 0.43 after 15 / 30 / 45 steps, while Mona and LoRA with the decoder adapted fell to background-only "
          "predictions within 10-20 steps, hence one lr of 1e-3 for every row here, not tuned per method. A budget "
          "where full fine-tuning converges (hundreds of steps: minutes on a GPU, hours on this CPU) and a per-method "
          "lr would settle it. The file-size and step-time columns do not depend on the budget; step times are CPU "
          "time of one thread at 64^3, and on a GPU the ratios differ.")

if __name__ == "__main__":
    main()
