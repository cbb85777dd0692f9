"""Benchmark: corrupt-stage materialization speed (images/s) at 1 and 2 workers on real images.

Extracts a class-stratified, evenly spaced sample of the real archive's images into a
temporary folder (canonical grayscale PNGs, as the download stage stores them; deleted at
the end), runs ``tasks.corrupt.corrupt`` over the whole suite at each worker count, checks the
outputs are byte-identical, and extrapolates the corrupted set's size on disk to the carved
real test split. Prints JSON and writes it to ``reports/benchmarks/corrupt.json``.

    uv run --frozen python -m benchmarks.corrupt [--images 200] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.compute import default_workers
from tasks.corrupt import MANIFEST, corrupt
from tasks.corruptions import FAMILIES, SEVERITIES
from tasks.io import png_bytes, write_csv, write_json
from tasks.params import CorruptParams

ARCHIVE = Path("../shared/datasets/chest_xray_224_train.zip")
OUT = Path("reports/benchmarks/corrupt.json")
CLASSES = ("NORMAL", "PNEUMONIA")
DEFAULT_IMAGES = 200
# The real archive's carved test split: split.test_fraction (0.15) of 5,216 images, by patient.
REAL_TEST_IMAGES = 780
SPLIT_FIELDS = ("path", "label", "source_split", "patient_id", "sha256", "width", "height")
BLOCK = 4096  # filesystem block size used for the on-disk (allocated) estimate


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


def tree_digest(folder: Path) -> tuple[str, int, int]:
    """sha256 over (relative path, bytes) of every file; total bytes; allocated bytes."""
    h = hashlib.sha256()
    size = allocated = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + data)
            size += len(data)
            allocated += -(-len(data) // BLOCK) * BLOCK
    return h.hexdigest(), size, allocated


def main() -> None:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--severities", type=int, nargs="+", default=list(SEVERITIES))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not args.archive.exists():
        raise SystemExit(f"error: {args.archive}: archive not found")
    params = CorruptParams(families=tuple(FAMILIES), severities=tuple(args.severities))
    result: dict[str, object] = {
        "archive": str(args.archive),
        "families": len(params.families),
        "severities": list(params.severities),
        "cpu_cores": default_workers(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="xray-bench-corrupt-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        csv = extract_sample(args.archive, args.images, root / "raw")
        n_src = sum(1 for _ in (root / "raw").rglob("*.png"))
        result["source_images"] = n_src
        result["extract_seconds"] = round(time.perf_counter() - t0, 2)
        digests = set()
        for workers in args.workers:
            out = root / f"out{workers}" / "corrupted"
            t0 = time.perf_counter()
            n = corrupt(params, csv, root / "raw", out, workers=workers)
            seconds = time.perf_counter() - t0
            digest, size, allocated = tree_digest(out)
            digests.add(digest)
            result["runs"].append(
                {
                    "workers": workers,
                    "images": n,
                    "seconds": round(seconds, 2),
                    "images_per_s": round(n / seconds, 1),
                    "bytes": size,
                    "allocated_bytes": allocated,
                    "manifest_bytes": (out / MANIFEST).stat().st_size,
                }
            )
            print(json.dumps(result["runs"][-1]), flush=True)
        result["byte_identical_across_workers"] = len(digests) == 1
    first = result["runs"][0]
    per_image = (first["bytes"] - first["manifest_bytes"]) / first["images"]
    per_image_alloc = first["allocated_bytes"] / first["images"]
    real = REAL_TEST_IMAGES * len(params.families) * len(params.severities)
    result["estimate_real_test_split"] = {
        "test_images": REAL_TEST_IMAGES,
        "corrupted_images": real,
        "mean_png_bytes": round(per_image),
        "bytes": round(per_image * real),
        "gib": round(per_image * real / 2**30, 3),
        "allocated_gib": round(per_image_alloc * real / 2**30, 3),
        "seconds_at": {str(r["workers"]): round(real / r["images_per_s"]) for r in result["runs"]},
    }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
