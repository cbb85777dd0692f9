"""Stage `download`: bring the images in from `data.source`, validate and normalize them.

The source is `synthetic` (generated here), a local folder, a local archive or an
http(s) URL of one. Every image is decoded once, normalized to 8-bit grayscale PNG
under ``data/raw/images/<source split>/<CLASS>/`` and listed in
``data/raw/manifest.csv``; broken files are quarantined to ``reports/quarantine.csv``
and exact duplicates listed in ``reports/duplicates.csv``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tasks import ingest
from tasks.io import MANIFEST_FIELDS, png_bytes, staged_dir, write_csv, write_json
from tasks.params import DataParams, load_params

log = logging.getLogger("xray.download")

RAW_DIR = Path("data/raw")
QUARANTINE = Path("reports/quarantine.csv")
DUPLICATES = Path("reports/duplicates.csv")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
CHUNK = 64


class DownloadError(RuntimeError):
    """The source cannot be used: one line naming the file, member or key."""


@dataclass(frozen=True)
class Ingested:
    """What one worker made of one candidate file."""

    found: ingest.Found
    sha256: str
    png: bytes | None
    size: tuple[int, int] | None
    reason: str | None


def is_url(source: str) -> bool:
    """True for http(s) sources."""
    return source.lower().startswith(("http://", "https://"))


def is_archive(path: Path) -> bool:
    """True when the file name has an archive suffix this stage extracts."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def source_root(params: DataParams, work: Path) -> tuple[Path, dict[str, object]]:
    """Materialize the source as a folder under `work`; return it and the source's identity."""
    source = params.source
    if source == "synthetic":
        from tasks.synthetic import generate

        root = work / "synthetic"
        n = generate(root, params.synthetic, params.classes)
        log.info("generated %d synthetic images", n)
        return root, {"kind": "synthetic", **params.synthetic.model_dump(mode="json")}
    if is_url(source):
        from tasks.fetch import fetch

        name = source.rsplit("/", 1)[-1].split("?", 1)[0] or "archive.zip"
        archive = fetch(source, work / name, sha256=params.sha256)
        identity: dict[str, object] = {
            "kind": "url",
            "url": source,
            "sha256": ingest.sha256_file(archive),
        }
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DownloadError(f"data.source: {source} does not exist")
        if path.is_dir():
            return path, {"kind": "folder", "path": str(path)}
        if not is_archive(path):
            raise DownloadError(
                f"data.source: {source} is neither a folder nor a .zip/.tar.gz archive"
            )
        digest = ingest.sha256_file(path)
        if params.sha256 and digest.lower() != params.sha256.lower():
            raise DownloadError(
                f"data.sha256: {path} has sha256 {digest}, expected {params.sha256}"
            )
        archive, identity = path, {"kind": "archive", "path": str(path), "sha256": digest}
    root = work / "extracted"
    root.mkdir()
    try:
        ingest.safe_extract(
            archive,
            root,
            max_total_bytes=params.max_archive_bytes,
            max_members=params.max_archive_members,
        )
    except ingest.IngestError as e:
        raise DownloadError(str(e)) from None
    return root, identity


def _ingest_one(found: ingest.Found, max_pixels: int, max_side: int | None) -> Ingested:
    """Hash, decode and re-encode one file (runs in a worker process)."""
    sha = ingest.sha256_file(found.path)
    try:
        image = ingest.load_image(found.path, max_pixels=max_pixels, max_side=max_side)
    except ingest.BadImage as e:
        return Ingested(found, sha, None, None, e.reason)
    return Ingested(found, sha, png_bytes(image), (image.shape[1], image.shape[0]), None)


def _ingest_all(found: list[ingest.Found], params: DataParams, workers: int) -> list[Ingested]:
    """Run _ingest_one over all files, in order, on `workers` processes."""
    args = (params.max_pixels, params.max_side)
    if workers <= 1 or len(found) < 2 * CHUNK:
        return [_ingest_one(f, *args) for f in found]
    with ProcessPoolExecutor(workers) as pool:
        n = len(found)
        return list(pool.map(_ingest_one, found, [args[0]] * n, [args[1]] * n, chunksize=CHUNK))


def _unique_name(folder_names: set[str], stem: str) -> str:
    name, k = f"{stem}.png", 1
    while name in folder_names:
        k += 1
        name = f"{stem}__{k}.png"
    folder_names.add(name)
    return name


def download(
    params: DataParams,
    out_dir: Path = RAW_DIR,
    quarantine_csv: Path = QUARANTINE,
    duplicates_csv: Path = DUPLICATES,
    workers: int = 0,
) -> dict[str, int]:
    """Ingest `params.source` into `out_dir`; return counts. Nothing is replaced on failure."""
    workers = workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="xray-download-") as tmp:
        root, identity = source_root(params, Path(tmp))
        try:
            found = ingest.find_images(
                root, params.classes, class_map=params.class_map, ignore=params.ignore
            )
        except ingest.IngestError as e:
            raise DownloadError(str(e)) from None
        if not found:
            raise DownloadError(
                f"data.source: no images of {list(params.classes)} found in {params.source}"
            )
        results = _ingest_all(found, params, workers)

        bad = [r for r in results if r.reason is not None]
        good = [r for r in results if r.reason is None]
        frac = len(bad) / len(results)
        for r in bad:
            log.warning("quarantined %s: %s", r.found.rel, r.reason)
        if frac > params.max_bad_fraction:
            raise DownloadError(
                f"data.max_bad_fraction: {len(bad)} of {len(results)} images are broken "
                f"({frac:.1%} > {params.max_bad_fraction:.1%}); "
                f"first: {bad[0].found.rel} ({bad[0].reason})"
            )

        rows, fallback = [], 0
        names: dict[Path, set[str]] = defaultdict(set)
        with staged_dir(out_dir) as stage:
            for r in good:
                f = r.found
                pid = ingest.patient_id(f.path.name, params.patient_pattern)
                if pid is None:
                    fallback += 1
                    pid = f"file:{r.sha256[:16]}"
                folder = Path("images") / f.split / f.label
                name = _unique_name(names[folder], Path(f.path.name).stem)
                (stage / folder).mkdir(parents=True, exist_ok=True)
                (stage / folder / name).write_bytes(r.png)
                w, h = r.size
                rows.append(
                    {
                        "path": (folder / name).as_posix(),
                        "label": f.label,
                        "source_split": f.split,
                        "patient_id": pid,
                        "sha256": r.sha256,
                        "width": w,
                        "height": h,
                    }
                )
            if fallback:
                log.warning(
                    "%d file names matched no patient pattern: one patient per file assumed "
                    "(set data.patient_pattern)",
                    fallback,
                )
            tree = hashlib.sha256("".join(f"{r['path']} {r['sha256']}\n" for r in rows).encode())
            identity["content_sha256"] = tree.hexdigest()
            write_csv(stage / "manifest.csv", rows, MANIFEST_FIELDS)
            write_json(stage / "source.json", identity)

    by_hash: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_hash[row["sha256"]].append(row)
    dup_rows = [
        {
            "sha256": h,
            "count": len(rs),
            "paths": " ".join(r["path"] for r in rs),
            "cross_split": len({r["source_split"] for r in rs}) > 1,
        }
        for h, rs in sorted(by_hash.items())
        if len(rs) > 1
    ]
    leaks = sum(1 for d in dup_rows if d["cross_split"])
    if dup_rows:
        log.warning(
            "%d exact duplicate groups (%d across source splits: leaks)", len(dup_rows), leaks
        )
    write_csv(duplicates_csv, dup_rows, ("sha256", "count", "cross_split", "paths"))
    write_csv(
        quarantine_csv, [{"path": r.found.rel, "reason": r.reason} for r in bad], ("path", "reason")
    )
    counts = {
        "images": len(rows),
        "quarantined": len(bad),
        "duplicate_groups": len(dup_rows),
        "patients": len({r["patient_id"] for r in rows}),
    }
    log.info("ingested %s", counts)
    return counts


def main() -> None:
    """Run the stage from params.yaml."""
    params = load_params()
    download(params.data)


if __name__ == "__main__":
    from tasks.cli_support import run_stage

    run_stage(main)
