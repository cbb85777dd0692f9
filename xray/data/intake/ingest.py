"""The download stage's work: ingest the source's images, screen them, write data/raw.

Every image is decoded once, normalized to 8-bit grayscale PNG under
``<raw>/images/<source split>/<CLASS>/`` and listed in ``<raw>/manifest.csv``; broken files,
entries the intake policy skips (docs/data-intake.md: FIFOs, links out of the source, oversize
files, ...) and images whose content appears under two classes (label conflicts) are listed in
the quarantine report and kept out; exact duplicates are listed in the duplicates report. Each
class needs at least ``data.min_images_per_class`` images. Temporary files live under
``.xray/tmp``. The paths come from the caller (the stage passes dvc.yaml's).

The work is done in xray/data/intake/: source.py (getting the source), archive.py
(extraction), layout.py (which files are labelled images), images.py (reading and decoding),
patients.py (ids). Images are decoded on the `compute` executor (xray/core/compute.py):
workers get bytes and return PNG bytes, each kept in a work file until it moves into data/raw.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from xray.core.compute import Runner
from xray.core.hashing import bytes_sha256
from xray.core.io import MANIFEST_FIELDS, png_bytes, staged_dir, work_dir, write_csv, write_json
from xray.core.params import ComputeParams, DataParams
from xray.core.progress import Progress, warn_some
from xray.data.intake import images, layout, patients
from xray.data.intake.entries import IngestError
from xray.data.intake.source import (
    DownloadError,
    check_read_as_recorded,
    check_record,
    check_source,
    source_root,
)

log = logging.getLogger("xray.download")

CHUNK = 64
"""Files per worker task."""
CHUNK_BYTES = 8 << 20
"""Bytes of source files per worker task, at most (unless one file is larger): below the
10 MB at which Dask warns about large task arguments."""
WORKER_MODULES = (
    "xray.data.intake.ingest",
    "xray.data.intake.images",
    "xray.data.intake.entries",
    "xray.core.io",
    "xray.core.hashing",
)
"""The code a worker runs for this stage: a Dask worker must have the same (checked)."""
INGEST_PNG_LEVEL = 1
"""zlib level of the ingested PNGs: ~2.5x faster to encode than 6, ~15% larger files."""
QUARANTINE_FIELDS = ("path", "reason", "detail")
QUARANTINE_LISTING = "the quarantine report lists each when the stage succeeds"
DUPLICATES_FIELDS = ("sha256", "count", "cross_split", "paths")
LABEL_CONFLICT = "label_conflict"


@dataclass(frozen=True)
class Ingested:
    """What one worker made of one candidate file."""

    found: layout.Found
    sha256: str
    png: bytes | Path | None  # the normalized PNG, or the file it waits in (_ingest_all)
    size: tuple[int, int] | None
    reason: str | None
    pixels: str | None = None  # sha256 of the normalized PNG: equal pixels, equal hash


def _ingest_chunk(
    items: list[bytes | str], max_pixels: int, max_side: int | None, png_level: int
) -> list[tuple[str, bytes | None, tuple[int, int] | None, str | None, str | None]]:
    """Hash, decode and re-encode files given as bytes (runs on a worker, local or Dask).

    An item that is a str is the reason the stage process could not read that file.
    """
    out: list[tuple[str, bytes | None, tuple[int, int] | None, str | None, str | None]] = []
    for data in items:
        if isinstance(data, str):
            out.append(("", None, None, data, None))
            continue
        sha = bytes_sha256(data)
        try:
            image = images.load_image(data, max_pixels=max_pixels, max_side=max_side)
        except images.BadImage as e:
            out.append((sha, None, None, e.reason, None))
            continue
        png = png_bytes(image, png_level)  # deterministic: equal pixels, equal bytes
        out.append((sha, png, (image.shape[1], image.shape[0]), None, bytes_sha256(png)))
    return out


def _read(path: Path, max_bytes: int) -> bytes | str:
    """A file's bytes, or why it cannot be read (too_large, fifo, unreadable, ...)."""
    try:
        return images.read_file(path, max_bytes)
    except images.BadImage as e:
        return e.reason


def _chunks(found: list[layout.Found]) -> list[list[layout.Found]]:
    """Consecutive runs of at most CHUNK files and about CHUNK_BYTES bytes."""
    chunks: list[list[layout.Found]] = [[]]
    size = 0
    for f in found:
        try:
            n = f.path.stat().st_size
        except OSError:
            n = 0
        if chunks[-1] and (len(chunks[-1]) >= CHUNK or size + n > CHUNK_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(f)
        size += n
    return chunks


def _ingest_all(
    found: list[layout.Found], params: DataParams, runner: Runner, spill: Path
) -> list[Ingested]:
    """Ingest all files, in order, on the runner's executor (files are read here, sent as bytes).

    Each normalized PNG goes to a file under `spill` as it comes back (write_raw moves it into
    place): memory holds the chunks in flight, not every image of the source.
    """
    job = functools.partial(
        _ingest_chunk,
        max_pixels=params.max_pixels,
        max_side=params.max_side,
        png_level=INGEST_PNG_LEVEL,
    )
    read = functools.partial(_read_chunk, max_bytes=params.max_file_bytes)
    chunks = _chunks(found)
    results: list[Ingested] = []
    spill.mkdir(parents=True, exist_ok=True)
    with Progress(len(found), "download: decoded", log, unit="images") as progress:
        for chunk, done in zip(chunks, runner.imap(job, chunks, read), strict=True):
            for f, (sha, png, size, reason, pixels) in zip(chunk, done, strict=True):
                if png is not None:
                    path = spill / f"{len(results)}.png"
                    path.write_bytes(png)
                    png = path
                results.append(Ingested(f, sha, png, size, reason, pixels))
            progress.update(len(chunk))
    return results


def _read_chunk(chunk: list[layout.Found], max_bytes: int) -> list[bytes | str]:
    """The bytes of a chunk's files (the reason instead where a file cannot be read)."""
    return [_read(f.path, max_bytes) for f in chunk]


def _unique_name(folder_names: set[str], stem: str) -> str:
    name, k = f"{stem}.png", 1
    while name in folder_names:
        k += 1
        name = f"{stem}__{k}.png"
    folder_names.add(name)
    return name


def label_conflicts(good: list[Ingested]) -> dict[int, list[Ingested]]:
    """Images whose decoded content also appears under another class: index -> the others."""
    by_content: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(good):
        by_content[r.pixels or r.sha256].append(i)
    out: dict[int, list[Ingested]] = {}
    for idx in by_content.values():
        if len({good[i].found.label for i in idx}) > 1:
            for i in idx:
                out[i] = [good[j] for j in idx if j != i]
    return out


def _quarantine_rows(
    skipped: list[layout.Skipped],
    bad: list[Ingested],
    conflicts: dict[int, list[Ingested]],
    good: list[Ingested],
) -> list[dict[str, str]]:
    """reports/quarantine.csv: every entry kept out, with its reason, sorted by path."""
    rows = [{"path": s.rel, "reason": s.reason, "detail": ""} for s in skipped]
    rows += [{"path": r.found.rel, "reason": r.reason or "", "detail": ""} for r in bad]
    for i, others in conflicts.items():
        r = good[i]
        where = " ".join(f"{o.found.rel} ({o.found.label})" for o in others)
        rows.append(
            {
                "path": r.found.rel,
                "reason": LABEL_CONFLICT,
                "detail": f"{r.found.label}; same image as {where}",
            }
        )
    return sorted(rows, key=lambda row: (row["path"], row["reason"]))


def check_class_counts(
    counts: Counter[str], classes: tuple[str, ...], minimum: int, where: str
) -> None:
    """One line naming the first class with fewer than `minimum` images (min_images_per_class)."""
    for c in classes:
        if counts.get(c, 0) < minimum:
            raise DownloadError(
                f"data.min_images_per_class: class {c} has {counts.get(c, 0)} images in {where}, "
                f"at least {minimum} needed"
            )


@dataclass(frozen=True)
class Screened:
    """The ingested files sorted: broken, decoded, in label conflicts, kept; entries skipped."""

    skipped: list[layout.Skipped]
    bad: list[Ingested]
    good: list[Ingested]
    conflicts: dict[int, list[Ingested]]
    kept: list[Ingested]


def find_images(root: Path, params: DataParams) -> layout.Layout:
    """The candidate images under the materialized source (one-line error when there are none)."""
    try:
        found_layout = layout.find_layout(
            root,
            params.classes,
            class_map=params.class_map,
            ignore=params.ignore,
            name=params.source if params.source != "synthetic" else None,
        )
    except IngestError as e:
        raise DownloadError(str(e)) from None
    if found_layout.hidden:
        log.info("ignored %d hidden entries (dot files, __MACOSX)", found_layout.hidden)
    skipped = [f"{s.rel}: {s.reason}" for s in found_layout.skipped]
    warn_some(log, "skipped", skipped, QUARANTINE_LISTING)
    if not found_layout.found:
        raise DownloadError(
            f"data.source: no images of {list(params.classes)} found in {params.source}"
        )
    return found_layout


def screen(results: list[Ingested], skipped: list[layout.Skipped], params: DataParams) -> Screened:
    """Sort out broken files and label conflicts; fail past data.max_bad_fraction or when a
    class has fewer than data.min_images_per_class images left."""
    bad = [r for r in results if r.reason is not None]
    good = [r for r in results if r.reason is None]
    conflicts = label_conflicts(good)
    warn_some(log, "quarantined", [f"{r.found.rel}: {r.reason}" for r in bad], QUARANTINE_LISTING)
    conflicted = [f"{good[i].found.rel} ({good[i].found.label})" for i in conflicts]
    warn_some(log, "label conflict:", conflicted, QUARANTINE_LISTING)
    counted = [s for s in skipped if s.reason not in layout.NOT_COUNTED]
    n_bad = len(bad) + len(counted) + len(conflicts)
    total = len(results) + len(counted)
    frac = n_bad / total
    if frac > params.max_bad_fraction:
        first = (
            f"{bad[0].found.rel} ({bad[0].reason})"
            if bad
            else f"{counted[0].rel} ({counted[0].reason})"
            if counted
            else f"{good[next(iter(conflicts))].found.rel} ({LABEL_CONFLICT})"
        )
        also = f", {len(conflicts)} in label conflicts" if conflicts else ""
        raise DownloadError(
            f"data.max_bad_fraction: {n_bad} of {total} images are broken{also} "
            f"({frac:.1%} > {params.max_bad_fraction:.1%}); first: {first}"
        )
    kept = [r for i, r in enumerate(good) if i not in conflicts]
    check_class_counts(
        Counter(r.found.label for r in kept),
        params.classes,
        params.min_images_per_class,
        params.source,
    )
    return Screened(skipped, bad, good, conflicts, kept)


def write_raw(
    kept: list[Ingested], params: DataParams, out_dir: Path, identity: dict[str, object]
) -> list[dict]:
    """Write the kept images, manifest.csv and source.json into out_dir (replaced at the end,
    nothing on failure); return the manifest rows."""
    rows, fallback = [], 0
    names: dict[Path, set[str]] = defaultdict(set)
    with staged_dir(out_dir) as stage:
        for r in kept:
            f = r.found
            pid = patients.patient_id(f.path.name, params.patient_pattern)
            if pid is None:
                fallback += 1
                pid = f"file:{r.sha256[:16]}"
            folder = Path("images") / f.split / f.label
            name = _unique_name(names[folder], Path(f.path.name).stem)
            (stage / folder).mkdir(parents=True, exist_ok=True)
            if isinstance(r.png, Path):
                shutil.move(r.png, stage / folder / name)  # a rename on one file system
            else:
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
    return rows


def duplicate_rows(rows: list[dict]) -> list[dict]:
    """The duplicates report: one row per group of images with equal source bytes."""
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
    return dup_rows


def download(
    params: DataParams,
    out_dir: Path,
    quarantine_csv: Path,
    duplicates_csv: Path,
    *,
    record: Path | None,
    workers: int = 0,
    compute: ComputeParams | None = None,
) -> dict[str, int]:
    """Ingest `params.source` into `out_dir`; return counts. Nothing is replaced on failure.

    `record` is the identity written by `probe`; it must describe `params.source`
    (None skips the check, for callers outside the pipeline). `compute` chooses where
    images are decoded (default: local processes); `workers` > 0 overrides its count.
    """
    compute = compute or ComputeParams()
    if workers:
        compute = compute.model_copy(update={"workers": workers})
    check_source(params)
    recorded = check_record(params, record) if record is not None else None
    with Runner(compute, WORKER_MODULES) as runner, work_dir("download") as tmp:
        root, identity, snapshot = source_root(params, tmp, recorded, record)
        if recorded is not None:
            identity["recorded"] = recorded
        found = find_images(root, params)
        results = _ingest_all(found.found, params, runner, tmp / "ingested")
        if snapshot is not None:  # a folder read in place: what was read is what was recorded
            read = {r.found.rel: r.sha256 for r in results if r.sha256}
            check_read_as_recorded(root, snapshot, read)
        s = screen(results, found.skipped, params)
        rows = write_raw(s.kept, params, out_dir, identity)
    dup_rows = duplicate_rows(rows)
    write_csv(duplicates_csv, dup_rows, DUPLICATES_FIELDS)
    write_csv(
        quarantine_csv, _quarantine_rows(s.skipped, s.bad, s.conflicts, s.good), QUARANTINE_FIELDS
    )
    counts = {
        "images": len(rows),
        "quarantined": len(s.bad) + len(s.skipped) + len(s.conflicts),
        "duplicate_groups": len(dup_rows),
        "patients": len({r["patient_id"] for r in rows}),
    }
    log.info("ingested %s", counts)
    return counts
