"""Benchmark: the evaluate stage now against a baseline commit, side by side, in images/s per model.

Takes a built workspace (default: this one; its models, splits and ``data/corrupted``),
carves a smaller test set from it (``--images`` test images, every family and severity of
them), writes it in both layouts (the current zips and the baseline's one PNG per file),
and runs ``evaluate`` with the baseline commit's ``tasks/`` (``git archive``, in its own
Python process) and with the current code, once with the plain models only (the figure
comparable with the baseline) and once as params.yaml configures adaptation (``<model>_adapted``
variants: a statistics pass and a prediction pass per target set). Reports, for each run,
the wall time, the scoring time the stage logs, and images/s per model (images scored x
variants / scoring seconds), and whether the plain models' metrics are identical between
baseline and current. Prints JSON and writes ``reports/benchmarks/evaluate.json``.

    python -m benchmarks.evaluate [--workspace DIR] [--images 120] [--baseline 972920f]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from benchmarks._common import REPO, machine, materialize, require, run_driver, write_report
from xray.core.io import read_csv, read_zip_images, write_csv, write_zip

BASELINE = "972920f"
DEFAULT_IMAGES = 120
VAL_IMAGES = 64  # the proxy sets' val images (the current code only): kept small
OLD_FIELDS = ("path", "label", "family", "severity", "patient_id", "sha256", "source_path")
SCORED = re.compile(r"scored (\d+) images x (\d+) models in ([\d.]+)s")

# Run in a fresh interpreter with the code under test first on sys.path. argv: code root,
# workspace, "baseline" | "plain" | "adapted". Prints one JSON line.
DRIVER = """
import json, logging, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
ws, mode = Path(sys.argv[2]), sys.argv[3]
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("xray").addHandler(Keep())
logging.getLogger("xray").setLevel(logging.INFO)
from xray.core.params import CorruptParams, EvaluateParams, load_params
if mode == "baseline":  # the baseline commit's stage module held the function
    from tasks.evaluate import evaluate
else:
    from xray.reports.evaluation import evaluate
if mode == "baseline":  # its own defaults: params.yaml has keys its schema does not know
    ev, classes, held_out = EvaluateParams(), ("NORMAL", "PNEUMONIA"), CorruptParams().held_out
else:
    p = load_params(ws / "params.yaml")
    ev, classes, held_out = p.evaluate, p.data.classes, p.corrupt.held_out
kw = dict(
    models={"base": ws / "models/base.keras", "finetuned": ws / "models/finetuned.keras"},
    test_csv=ws / "data/splits/test.csv",
    reports=ws / "reports", held_out=held_out, raw_dir=ws / "data/raw",
    live={"base": ws / "dvclive/train_base", "finetuned": ws / "dvclive/finetune"},
)
if mode != "baseline":
    from xray.models.training import configure
    configure(p.adapt.seed, deterministic=True, threads=p.train.threads)
    adapt = p.adapt if mode == "adapted" else p.adapt.model_copy(update={"models": ()})
    kw.update(adapt=adapt, val_csv=ws / "data/splits/val.csv",
              corrupted_manifest=ws / "data/corrupted/manifest.csv",
              source_json=ws / "data/raw/source.json")
else:
    kw.update(corrupted_dir=ws / "data/corrupted")
t0 = time.perf_counter()
metrics = evaluate(ev, classes, **kw)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "log": [m for m in lines if "scored" in m],
                  "metrics": metrics}))
"""


def carve(workspace: Path, dest: Path, images: int, val_images: int) -> dict[str, int]:
    """A smaller workspace in dest: n test images, all their corrupted copies, both layouts."""
    test = read_csv(workspace / "data/splits/test.csv")
    step = max(1, len(test) // images)
    keep = test[::step][:images]
    paths = {r["path"] for r in keep}
    manifest = [
        r for r in read_csv(workspace / "data/corrupted/manifest.csv") if r["source_path"] in paths
    ]
    for name in ("models", "dvclive"):
        os.symlink((workspace / name).resolve(), dest / name)
    (dest / "data/splits").mkdir(parents=True)
    os.symlink((workspace / "data/raw").resolve(), dest / "data/raw")
    write_csv(dest / "data/splits/test.csv", keep, list(keep[0]))
    val = read_csv(workspace / "data/splits/val.csv")
    write_csv(dest / "data/splits/val.csv", val[:: max(1, len(val) // val_images)], list(val[0]))
    (dest / "params.yaml").write_bytes((workspace / "params.yaml").read_bytes())
    # The current layout: one zip per family and severity, members in test order.
    by_archive: dict[str, list[dict[str, str]]] = {}
    for r in manifest:
        by_archive.setdefault(r["archive"], []).append(r)
    current = dest / "current" / "data/corrupted"
    old = dest / "baseline" / "data/corrupted"
    old_rows = []
    for archive, rows in by_archive.items():
        members = read_zip_images(
            workspace / "data/corrupted" / archive, [r["member"] for r in rows]
        )
        write_zip(current / archive, members)
        for r, (member, data) in zip(rows, members, strict=True):
            rel = Path(r["family"]) / r["severity"] / member
            (old / rel).parent.mkdir(parents=True, exist_ok=True)
            (old / rel).write_bytes(data)
            old_rows.append({**r, "path": rel.as_posix(), "sha256": r["source_sha256"]})
    write_csv(current / "manifest.csv", manifest, list(manifest[0]))
    write_csv(old / "manifest.csv", old_rows, OLD_FIELDS)
    for side in ("current", "baseline"):
        for name in ("models", "dvclive", "params.yaml"):
            os.symlink(dest / name, dest / side / name)
        os.symlink(dest / "data/splits", dest / side / "data/splits")
        os.symlink(dest / "data/raw", dest / side / "data/raw")
    return {"test_images": len(keep), "corrupted_images": len(manifest)}


def run(code: Path, ws: Path, mode: str) -> dict[str, object]:
    """One evaluate in a fresh process with the code at `code`; its JSON result."""
    out = run_driver(DRIVER, [str(code), str(ws), mode], code, ws, f"evaluate ({mode})")
    images, variants, seconds = SCORED.search(out["log"][-1]).groups()  # type: ignore[union-attr]
    scored = int(images) * int(variants)
    return {
        "mode": mode,
        "seconds": round(out["seconds"], 2),
        "scoring_seconds": float(seconds),
        "images": int(images),
        "variants": int(variants),
        "images_per_s_per_model": round(scored / float(seconds) / int(variants), 1),
        "predictions_per_s": round(scored / float(seconds), 1),
        "metrics": out["metrics"],
    }


def plain_metrics(metrics: dict) -> dict:
    """The plain models' clean and corrupted metrics (what both codes report)."""
    return {m: {k: metrics[m][k] for k in ("clean", "corrupted")} for m in ("base", "finetuned")}


def main() -> None:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    ap.add_argument("--val-images", type=int, default=VAL_IMAGES)
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--skip-adapted", action="store_true", help="only the comparable runs")
    args = ap.parse_args()
    ws = args.workspace.resolve()
    require(ws, ("models/base.keras", "models/finetuned.keras", "data/corrupted/manifest.csv"))
    result: dict[str, object] = {"workspace": str(ws), "baseline": args.baseline}
    result["machine"] = machine()
    with tempfile.TemporaryDirectory(prefix="xray-bench-evaluate-") as tmp:
        root = Path(tmp)
        result.update(carve(ws, root, args.images, args.val_images))
        code = materialize(args.baseline, root / "baseline-code")
        runs = [
            run(code, root / "baseline", "baseline"),
            run(REPO, root / "current", "plain"),
        ]
        if not args.skip_adapted:
            runs.append(run(REPO, root / "current", "adapted"))
    base, plain = runs[0], runs[1]
    result["plain_metrics_identical"] = plain_metrics(base["metrics"]) == plain_metrics(
        plain["metrics"]
    )
    result["speedup_per_model"] = round(
        float(plain["images_per_s_per_model"]) / float(base["images_per_s_per_model"]), 2
    )
    result["runs"] = [{k: v for k, v in r.items() if k != "metrics"} for r in runs]
    write_report("evaluate", result)


if __name__ == "__main__":
    main()
