"""`tile-predict` on many scenes and many processes: one output per scene, finished scenes skipped.

Scenes come as paths or `@LIST` (a text file naming one scene per line; blank lines and `#` comments are
skipped, relative paths are relative to the list). Each scene's output goes to `OUT_DIR/<scene stem>.tif`
(segmentation) or `.gpkg` (detection) in the scene's own CRS, with a `<output>.json` record written after the
output: the checkpoint's SHA-256, the scene's size and modification time and the settings. A re-run skips a
scene whose output exists with a matching record (outputs are renamed into place whole, so existence means
complete); another checkpoint, scene or setting predicts it again.

Under torchrun (`--gpus N`, or torchrun started by hand across machines) rank 0 checks every scene and
shares the plan. With at least as many scenes to predict as processes, each process predicts whole scenes
(the largest first, each to the least loaded process); with fewer, the processes predict each scene
together, by bands of tile rows (`domainmona.geo.predict`). A scene that fails (missing or unreadable
raster, a scene unlike the training scenes, an output domainmona did not write) is reported in one line and
the others go on; the command then exits with 2, like any bad input.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from domainmona.errors import UserError
from domainmona.geo.models import Predictor
from domainmona.geo.predict import ALONE, SCENE_ERRORS, Ranks, one_line
from domainmona.io import json_is_ours, write_json

# A process that finished its scenes waits at the final gather for the others: up to a week of prediction.
COLLECTIVE_TIMEOUT = timedelta(days=7)
LIST_PREFIX = "@"


def expand_scenes(arguments: list[Path]) -> list[Path]:
    """Scene paths, with every `@LIST` argument replaced by the scenes its file names."""
    scenes = []
    for argument in map(str, arguments):
        if not argument.startswith(LIST_PREFIX):
            scenes.append(Path(argument))
            continue
        listing = Path(argument[len(LIST_PREFIX):])
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{argument}: cannot read the scene list ({one_line(exc)})") from None
        names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not names:
            raise UserError(f"{argument}: the scene list names no scene")
        scenes += [listing.parent / name for name in names]
    return scenes


def scene_outputs(scenes: list[Path], out_dir: Path, suffix: str) -> list[Path]:
    """`OUT_DIR/<stem><suffix>` for each scene; two scenes with one stem (or one scene given twice) would
    write one file."""
    seen: dict[str, Path] = {}
    for scene in scenes:
        if scene.stem in seen:
            raise UserError(f"{seen[scene.stem]} and {scene} would both write {out_dir / (scene.stem + suffix)}; "
                            "give each scene once, and scenes of one name in separate calls")
        seen[scene.stem] = scene
    return [out_dir / (scene.stem + suffix) for scene in scenes]


def record_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


@dataclass
class Outcome:
    scene: str
    status: str  # predicted | skipped | failed
    result: int = 0  # pixels labelled or objects written
    seconds: float = 0.0
    output: str = ""  # the output's name, or the one-line reason of a failure


def _identity(predictor: Predictor, checkpoint_sha: str, raster: Path) -> dict:
    """What a finished output was predicted from: another value means predicting again."""
    stat = raster.stat()
    settings = {k: v for k, v in asdict(predictor.settings).items() if k != "batch_size"}
    return {"command": "tile-predict", "checkpoint_sha256": checkpoint_sha, "raster": str(raster.resolve()),
            "raster_bytes": stat.st_size, "raster_mtime_ns": stat.st_mtime_ns, "settings": settings}


def file_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path.is_file():
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def _finished(scene: Path, out: Path, identity: dict) -> Outcome | None:
    """The outcome of an earlier run that predicted ``out`` from the same ``identity``, if any."""
    import json

    record = record_path(out)
    if not (out.is_file() and json_is_ours(record)):
        return None
    done = json.loads(record.read_text(encoding="utf-8"))
    if {k: done.get(k) for k in identity} != identity:
        return None
    return Outcome(str(scene), "skipped", int(done.get("result", 0)), 0.0, out.name)


def plan(predictor: Predictor, scenes: list[Path], outputs: list[Path],
         records: bool) -> tuple[list[Outcome], list[dict]]:
    """Rank 0's look at every scene before any prediction: the outcomes of the skipped (``records``: an
    output with a matching record) and failed ones, and the scenes to predict (index, pixels, identity)."""
    import rasterio

    sha = file_sha256(predictor.inputs())
    outcomes, pending = [Outcome(str(scene), "pending") for scene in scenes], []
    for index, (scene, out) in enumerate(zip(scenes, outputs)):
        try:
            identity = _identity(predictor, sha, scene) if records and scene.is_file() else None
            done = identity and _finished(scene, out, identity)
            if done:
                outcomes[index] = done
                continue
            predictor.check(scene, out)
            with rasterio.open(scene) as src:
                pixels = src.width * src.height
        except SCENE_ERRORS as exc:
            outcomes[index] = Outcome(str(scene), "failed", output=one_line(exc))
            continue
        pending.append({"index": index, "pixels": pixels, "identity": identity})
    return outcomes, pending


def assign(pending: list[dict], world: int) -> list[list[dict]]:
    """Whole scenes per process: the largest first, each to the process with the fewest pixels so far."""
    loads, shares = [0] * world, [[] for _ in range(world)]
    for scene in sorted(pending, key=lambda s: (-s["pixels"], s["index"])):
        rank = loads.index(min(loads))
        loads[rank] += scene["pixels"]
        shares[rank].append(scene)
    return [sorted(share, key=lambda s: s["index"]) for share in shares]


def _predict(predictor: Predictor, scene: Path, out: Path, identity: dict | None, ranks: Ranks) -> Outcome:
    """One scene (shared by ``ranks``); rank 0 of them writes the record (if an ``identity`` is given). A
    failure becomes the outcome."""
    start = time.perf_counter()
    try:
        result = predictor.predict(scene, out, ranks)
        if ranks.rank == 0 and identity is not None:
            write_json(record_path(out), {**identity, "result": result, "seconds": time.perf_counter() - start})
    except SCENE_ERRORS as exc:
        return Outcome(str(scene), "failed", seconds=time.perf_counter() - start, output=one_line(exc))
    return Outcome(str(scene), "predicted", result, time.perf_counter() - start, out.name)


def predict_scenes(predictor: Predictor, scenes: list[Path], outputs: list[Path], ranks: Ranks,
                   records: bool = True) -> list[Outcome] | None:
    """Predict every scene into its output (``records``: beside a record, skipping the finished ones); every
    process calls it. Returns each scene's outcome on rank 0 (None on the others)."""
    planned = ranks.broadcast(plan(predictor, scenes, outputs, records) if ranks.rank == 0 else None)
    outcomes, pending = planned
    if pending:
        predictor.load()
    mine: list[tuple[int, Outcome]] = []
    if len(pending) >= ranks.world:
        for scene in assign(pending, ranks.world)[ranks.rank]:
            i = scene["index"]
            mine.append((i, _predict(predictor, scenes[i], outputs[i], scene["identity"], ALONE)))
    else:
        for scene in pending:  # every process on each scene, by bands of tile rows
            i = scene["index"]
            outcome = _predict(predictor, scenes[i], outputs[i], scene["identity"], ranks)
            if ranks.rank == 0:
                mine.append((i, outcome))
    gathered = ranks.gather(mine)
    if ranks.rank:
        return None
    for share in gathered:
        for index, outcome in share:
            outcomes[index] = outcome
    return outcomes


def summary_table(outcomes: list[Outcome], unit: str):
    """The rich table `tile-predict --out-dir` prints last."""
    from rich.table import Table

    table = Table(title="tile-predict")
    for name, justify in (("scene", "left"), ("status", "left"), (unit, "right"), ("seconds", "right"),
                          ("output", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    styles = {"predicted": "green", "skipped": "cyan", "failed": "red"}
    for o in outcomes:
        table.add_row(o.scene, f"[{styles[o.status]}]{o.status}[/]", "" if o.status == "failed" else f"{o.result:,}",
                      f"{o.seconds:.1f}" if o.status == "predicted" else "", o.output)
    return table
