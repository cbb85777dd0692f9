"""Benchmark: the corrupt stage now against a baseline commit, side by side on real images.

Extracts a class-stratified, evenly spaced sample of the real archive's images into a
temporary folder (canonical grayscale PNGs, as the download stage stores them), materializes
the baseline commit's ``tasks/`` there (``git archive``), and runs ``corrupt`` over the whole
suite with each code at each worker count, each in its own Python process (the baseline
imported from its folder), alternating baseline and current so both see the same machine
load. Reports images/s, the speedup at each worker count, the files and bytes on disk, and
whether the current outputs are byte-identical across worker counts. Prints JSON and writes
``reports/benchmarks/corrupt.json``.

    python -m benchmarks.corrupt [--images 200] [--workers 2] [--baseline 972920f]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import REPO, machine, materialize, run_driver, write_report
from xray.core.io import png_bytes, write_csv
from xray.perturbations.corruptions import FAMILIES, SEVERITIES

ARCHIVE = Path("../shared/datasets/chest_xray_224_train.zip")
CLASSES = ("NORMAL", "PNEUMONIA")
DEFAULT_IMAGES = 200
BASELINE = "972920f"  # before this work: PNG level 6, full-grid zoom_blur, one file per image
REAL_TEST_IMAGES = 783  # the real archive's carved test split (data/splits/test.csv)
SPLIT_FIELDS = ("path", "label", "source_split", "patient_id", "sha256", "width", "height")
BLOCK = 4096  # filesystem block size used for the on-disk (allocated) estimate

# Run in a fresh interpreter with the code under test first on sys.path (argv: code root,
# test.csv, raw folder, output folder, workers, families, severities).
DRIVER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
if (Path(sys.argv[1]) / "xray" / "perturbations" / "materialize.py").exists():
    from xray.perturbations.materialize import corrupt
else:  # a commit from before the library layout
    from tasks.corrupt import corrupt
from xray.core.params import CorruptParams
params = CorruptParams(families=tuple(sys.argv[6].split(",")),
                       severities=tuple(int(s) for s in sys.argv[7].split(",")))
t0 = time.perf_counter()
csv, raw, out = (Path(a) for a in sys.argv[2:5])
n = corrupt(params, csv, raw, out, workers=int(sys.argv[5]))
print(json.dumps({"images": n, "seconds": time.perf_counter() - t0}))
"""


def extract_sample(archive: Path, n: int, dest: Path) -> Path:
    """Write n evenly spaced archive images (class proportions kept) as PNGs; return test.csv."""
    with zipfile.ZipFile(archive) as z:
        names = sorted(
            i.filename for i in z.infolist() if i.filename.lower().endswith((".jpeg", ".jpg"))
        )
        by_class = {c: [x for x in names if f"/{c}/" in x] for c in CLASSES}
        total = sum(len(v) for v in by_class.values())
        rows = []
        for label, members in by_class.items():
            k = max(1, round(n * len(members) / total))
            for name in [members[i] for i in np.linspace(0, len(members) - 1, k).astype(int)]:
                with Image.open(io.BytesIO(z.read(name))) as im:
                    data = png_bytes(np.asarray(im.convert("L"), dtype=np.uint8))
                rel = Path("images") / "train" / label / (Path(name).stem + ".png")
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                (dest / rel).write_bytes(data)
                w, h = Image.open(dest / rel).size
                rows.append(
                    {
                        "path": rel.as_posix(),
                        "label": label,
                        "source_split": "train",
                        "patient_id": Path(name).stem,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "width": w,
                        "height": h,
                    }
                )
    csv = dest / "test.csv"
    write_csv(csv, rows, SPLIT_FIELDS)
    return csv


def tree_digest(folder: Path) -> dict[str, object]:
    """sha256 over (relative path, bytes) of every file; file count, bytes, allocated bytes."""
    h = hashlib.sha256()
    files = size = allocated = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + data)
            files += 1
            size += len(data)
            allocated += -(-len(data) // BLOCK) * BLOCK
    return {"sha256": h.hexdigest(), "files": files, "bytes": size, "allocated_bytes": allocated}


def timed(code: Path, csv: Path, raw: Path, out: Path, workers: int, sev: list[int]) -> dict:
    """Run one corrupt in a fresh process importing the code at `code`; its JSON line."""
    args = [str(code), str(csv), str(raw), str(out), str(workers), ",".join(FAMILIES)]
    args.append(",".join(map(str, sev)))
    return run_driver(DRIVER, args, code, code, f"corrupt with the code at {code}")


def main() -> None:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--severities", type=int, nargs="+", default=list(SEVERITIES))
    ap.add_argument("--baseline", default=BASELINE, help="git commit to compare with")
    args = ap.parse_args()
    if not args.archive.exists():
        raise SystemExit(f"error: {args.archive}: archive not found")
    result: dict[str, object] = {
        "archive": str(args.archive),
        "baseline": args.baseline,
        "families": len(FAMILIES),
        "severities": args.severities,
        "machine": machine(),
        "runs": [],
    }
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="xray-bench-corrupt-") as tmp:
        root = Path(tmp)
        csv = extract_sample(args.archive, args.images, root / "raw")
        result["source_images"] = sum(1 for _ in (root / "raw").rglob("*.png"))
        codes = {"baseline": materialize(args.baseline, root / "baseline"), "current": REPO}
        for workers in args.workers:
            for side, code in codes.items():  # alternate: both sides under the same load
                out = root / f"{side}{workers}" / "corrupted"
                run = timed(code, csv, root / "raw", out, workers, args.severities)
                disk = tree_digest(out)
                row = {
                    "code": side,
                    "workers": workers,
                    "images": run["images"],
                    "seconds": round(run["seconds"], 2),
                    "images_per_s": round(run["images"] / run["seconds"], 1),
                    **{k: v for k, v in disk.items() if k != "sha256"},
                }
                runs.append({**row, "sha256": disk["sha256"]})
                result["runs"].append(row)
                print(json.dumps(row), flush=True)
    current = [r for r in runs if r["code"] == "current"]
    result["current_byte_identical_across_workers"] = len({r["sha256"] for r in current}) == 1
    result["speedup"] = {
        str(w): round(
            next(r["seconds"] for r in runs if r["code"] == "baseline" and r["workers"] == w)
            / next(r["seconds"] for r in current if r["workers"] == w),
            2,
        )
        for w in args.workers
    }
    real = REAL_TEST_IMAGES * len(FAMILIES) * len(args.severities)
    result["estimate_real_test_split"] = {
        "corrupted_images": real,
        **{
            f"{r['code']}_w{r['workers']}": {
                "seconds": round(real / r["images_per_s"]),
                "gib": round(r["bytes"] / r["images"] * real / 2**30, 3),
            }
            for r in runs
        },
    }
    write_report("corrupt", result)


if __name__ == "__main__":
    main()
