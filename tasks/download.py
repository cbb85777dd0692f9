"""Stage `download`: bring the images in from `data.source`, validate and normalize them.

The source is `synthetic` (generated here), a local folder, a local archive or an
http(s) URL of one. Every image is decoded once, normalized to 8-bit grayscale PNG
under ``data/raw/images/<source split>/<CLASS>/`` and listed in
``data/raw/manifest.csv``; broken files, entries the intake policy skips (docs/data-intake.md:
FIFOs, links out of the source, oversize files, ...) and images whose content appears
under two classes (label conflicts) are listed in ``reports/quarantine.csv`` and kept out;
exact duplicates are listed in ``reports/duplicates.csv``. Each class needs at least
``data.min_images_per_class`` images. Temporary files live under ``.xray/tmp``.

The work is done by xray/data/archive.py (extraction), xray/data/layout.py (which files are
labelled images), xray/data/images.py (reading and decoding) and xray/data/patients.py (ids).

A URL is fetched by xray/data/fetch.py, the only place that retries: transient errors (connection
errors, timeouts, HTTP 5xx/408/429) up to FETCH_RETRIES times with backoff, permanent ones
fail at once. Its partial file is kept under ``.xray/downloads/<key>/`` so a rerun resumes.

Change detection: `probe` records the source's identity (URL + ETag/Last-Modified/size
or the pinned sha256; a local archive's sha256; a folder's tree hash) in
``data/source.json``, rewriting it only when the identity changed. That small file is a
dependency of this stage in dvc.yaml, so an unchanged source leaves the whole pipeline
cached and a changed one reruns it. `xray run` probes before this stage; after editing
``data.source`` by hand run ``xray probe`` (the stage refuses a record of another source).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from xray.core.compute import Runner
from xray.core.hashing import bytes_sha256, file_sha256
from xray.core.io import (
    MANIFEST_FIELDS,
    png_bytes,
    staged_dir,
    work_dir,
    write_csv,
    write_json,
)
from xray.core.params import PARAMS_FILE, ComputeParams, DataParams, load_params, parse_params
from xray.core.progress import Progress
from xray.data import images, layout, patients
from xray.data.archive import safe_extract
from xray.data.intake import IngestError

log = logging.getLogger("xray.download")

RAW_DIR = Path("data/raw")
SOURCE_RECORD = Path("data/source.json")
PROBE_HINT = "run `xray probe` to record it"
MAGIC_SUFFIXES = ((b"PK\x03\x04", ".zip"), (b"\x1f\x8b", ".tar.gz"))
"""Leading bytes -> archive suffix, for URLs whose name does not say the type."""
URL_VALIDATORS = ("etag", "last_modified", "size")
FETCH_RETRIES = 5
"""Retries of a transient failure (probe HEAD and transfer); no other layer retries."""
FETCH_BACKOFF_S = 1.0
"""First retry delay of a failed transfer (doubles per retry)."""
DOWNLOAD_CACHE = Path(".xray/downloads")
"""Partial downloads of URL sources, kept across runs to resume (git- and dvc-ignored)."""
QUARANTINE = Path("reports/quarantine.csv")
DUPLICATES = Path("reports/duplicates.csv")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
CHUNK = 64
"""Files per worker task."""
CHUNK_BYTES = 8 << 20
"""Bytes of source files per worker task, at most (unless one file is larger): below the
10 MB at which Dask warns about large task arguments."""
WORKER_MODULES = ("tasks.download", "xray.data.images", "xray.data.intake", "xray.core.io")
"""The code a worker runs for this stage: a Dask worker must have the same (checked)."""
INGEST_PNG_LEVEL = 1
"""zlib level of the ingested PNGs: ~2.5x faster to encode than 6, ~15% larger files."""
QUARANTINE_FIELDS = ("path", "reason", "detail")
LABEL_CONFLICT = "label_conflict"


class DownloadError(RuntimeError):
    """The source cannot be used: one line naming the file, member or key."""


@dataclass(frozen=True)
class Ingested:
    """What one worker made of one candidate file."""

    found: layout.Found
    sha256: str
    png: bytes | None
    size: tuple[int, int] | None
    reason: str | None
    pixels: str | None = None  # sha256 of the normalized PNG: equal pixels, equal hash


def is_url(source: str) -> bool:
    """True for http(s) sources."""
    return source.lower().startswith(("http://", "https://"))


def is_archive(path: Path) -> bool:
    """True when the file name has an archive suffix this stage extracts."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def check_source(params: DataParams, base: Path = Path(".")) -> None:
    """Fail with one line naming data.source when a local source does not exist."""
    source = params.source
    if source == "synthetic" or is_url(source):
        return
    path = base / Path(source).expanduser()
    if not path.exists():
        raise DownloadError(f"data.source: {source} does not exist")
    if not path.is_dir() and not is_archive(path):
        raise DownloadError(
            f"data.source: {source} is neither a folder nor a .zip/.tar.gz/.tgz/.tar archive"
        )
    if not path.is_dir() and not path.is_file():  # a FIFO or device named .zip: never opened
        raise DownloadError(f"data.source: {source} is not a regular file")


def tree_sha256(folder: Path) -> tuple[str, int]:
    """Content hash of a folder (relative paths + file sha256s, hidden/junk skipped); file count.

    Walked by the intake policy (xray/data/layout.py): links are followed inside the folder
    only, and entries that are not regular files (FIFOs, sockets, devices, links out)
    are hashed by name and kind, never opened.
    """
    base = folder.resolve()
    walker = layout.Walker(base, str(folder))
    h = hashlib.sha256()
    n = 0
    try:
        for e in walker.walk(base):
            if e.kind == layout.DIR:
                continue
            rel = walker.rel(e.path)
            if e.kind == layout.FILE and e.real is not None:
                h.update(f"{rel}\0{file_sha256(e.real)}\n".encode())
                n += 1
            else:
                h.update(f"{rel}\0<{e.kind}>\n".encode())
    except IngestError as e:
        raise DownloadError(f"data.source: {e}") from None
    return h.hexdigest(), n


def identify(params: DataParams, base: Path = Path(".")) -> dict[str, object]:
    """The source's identity: cheap to compute, and changes whenever its content may have."""
    source = params.source
    if source == "synthetic":  # fully described by the data.synthetic params
        return {"source": source, "kind": "synthetic"}
    if is_url(source):
        if params.sha256:  # pinned: the content is whatever has this digest
            return {"source": source, "kind": "url", "sha256": params.sha256.lower()}
        from xray.data.fetch import FetchError, probe

        try:
            info = probe(source, retries=FETCH_RETRIES, backoff=FETCH_BACKOFF_S)
        except FetchError as e:
            raise DownloadError(f"data.source: {e}") from None
        if not (info["etag"] or info["last_modified"]):
            log.warning(
                "%s sends no ETag or Last-Modified: only its size detects a change "
                "(set data.sha256 to pin the content)",
                source,
            )
        return {"source": source, "kind": "url", **{k: info[k] for k in URL_VALIDATORS}}
    check_source(params, base)
    path = base / Path(source).expanduser()
    if path.is_dir():
        digest, n = tree_sha256(path)
        return {"source": source, "kind": "folder", "tree_sha256": digest, "files": n}
    digest = file_sha256(path)
    if params.sha256 and digest != params.sha256.lower():
        raise DownloadError(f"data.sha256: {source} has sha256 {digest}, expected {params.sha256}")
    return {"source": source, "kind": "archive", "sha256": digest, "size": path.stat().st_size}


def read_record(record: Path) -> dict[str, object] | None:
    """The recorded source identity, or None when the file is missing or unreadable."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def probe(
    params: DataParams, record: Path = SOURCE_RECORD, base: Path = Path(".")
) -> tuple[bool, dict[str, object]]:
    """Record the source's identity in `record` only when it changed; return (changed, identity)."""
    identity = identify(params, base)
    changed = read_record(record) != identity
    if changed:
        write_json(record, identity)
        log.info("source changed: %s updated (%s)", record, identity)
    else:
        log.info("source unchanged (%s)", record)
    return changed, identity


def probe_project(workdir: Path = Path("."), source: str | None = None) -> str:
    """Probe data.source of the project in workdir (or `source` instead); one-line summary."""
    data = load_params(workdir / PARAMS_FILE).data
    if source is not None:  # validated like params.yaml: a ParamsError naming data.source
        raw = {"data": {**data.model_dump(mode="json"), "source": source}}
        data = parse_params(raw, "--source").data
    changed, identity = probe(data, workdir / SOURCE_RECORD, base=workdir)
    state = "changed, recorded" if changed else "unchanged"
    shown = {k: v for k, v in identity.items() if k != "source"}
    return f"{SOURCE_RECORD}: {data.source} {state} {json.dumps(shown, sort_keys=True)}"


def check_record(params: DataParams, record: Path) -> dict[str, object]:
    """The recorded identity, after checking it describes data.source (one-line error if not)."""
    recorded = read_record(record)
    if recorded is None:
        raise DownloadError(f"{record}: missing or unreadable; {PROBE_HINT}")
    if recorded.get("source") != params.source:
        raise DownloadError(
            f"data.source is {params.source!r} but {record} records "
            f"{recorded.get('source')!r}; {PROBE_HINT}"
        )
    pinned = params.sha256.lower() if params.sha256 else None
    if is_url(params.source) and recorded.get("sha256") != pinned:
        raise DownloadError(
            f"data.sha256 is {pinned} but {record} records {recorded.get('sha256')}; {PROBE_HINT}"
        )
    return recorded


def _changed_since_probe(record: Path, key: str, recorded: object, now: object) -> DownloadError:
    """The error for a source whose identity no longer matches the record."""
    return DownloadError(
        f"data.source changed since it was recorded in {record} ({key} {recorded} -> {now}); "
        "run `xray probe` again"
    )


def _verify(
    recorded: dict[str, object],
    now: dict[str, object],
    record: Path | None,
    *,
    unknown_ok: bool = False,
) -> None:
    """Raise when an identity field present in both differs (unknown_ok: skip recorded None)."""
    if record is None:
        return
    for key, value in now.items():
        if key not in recorded or (unknown_ok and recorded[key] is None):
            continue
        if recorded[key] != value:
            raise _changed_since_probe(record, key, recorded[key], value)


def _archive_name(url: str) -> str:
    """A local file name for the archive at url."""
    return url.rsplit("/", 1)[-1].split("?", 1)[0].split("#", 1)[0] or "archive"


def _with_archive_suffix(path: Path) -> Path:
    """Rename a downloaded file without an archive suffix after its leading bytes."""
    if is_archive(path):
        return path
    with path.open("rb") as f:
        head = f.read(8)
    for magic, suffix in MAGIC_SUFFIXES:
        if head.startswith(magic):
            return path.rename(path.with_name(path.name + suffix))
    return path  # safe_extract names it in its error


def source_root(
    params: DataParams,
    work: Path,
    recorded: dict[str, object] | None = None,
    record: Path | None = None,
) -> tuple[Path, dict[str, object]]:
    """Materialize the source as a folder under `work`; return it and the source's identity.

    When `recorded` (the identity in `record`) is given, the source must still match it.
    """
    source = params.source
    recorded = recorded or {}
    if source == "synthetic":
        from xray.data.synthetic import generate

        root = work / "synthetic"
        n = generate(root, params.synthetic, params.classes)
        log.info("generated %d synthetic images", n)
        return root, {"kind": "synthetic", **params.synthetic.model_dump(mode="json")}
    check_source(params)
    if is_url(source):
        from xray.data.fetch import FetchError, fetch

        try:
            validators = None  # fetch probes them itself when needed
            if record is not None and not params.sha256:
                now = identify(params)
                validators = {k: now[k] for k in URL_VALIDATORS}
                _verify(recorded, validators, record)
            archive = fetch(
                source,
                work / _archive_name(source),
                sha256=params.sha256,
                validators=validators,
                cache_dir=DOWNLOAD_CACHE,
                retries=FETCH_RETRIES,
                backoff=FETCH_BACKOFF_S,
            )
        except FetchError as e:
            raise DownloadError(f"data.source: {e}") from None
        archive = _with_archive_suffix(archive)
        identity: dict[str, object] = {
            "kind": "url",
            "url": source,
            "sha256": file_sha256(archive),
        }
        _verify(recorded, {"size": archive.stat().st_size}, record, unknown_ok=True)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            if record is not None:
                digest, _ = tree_sha256(path)
                _verify(recorded, {"tree_sha256": digest}, record)
            return path, {"kind": "folder", "path": str(path)}
        digest = file_sha256(path)
        if params.sha256 and digest.lower() != params.sha256.lower():
            raise DownloadError(
                f"data.sha256: {path} has sha256 {digest}, expected {params.sha256}"
            )
        _verify(recorded, {"sha256": digest}, record)
        archive, identity = path, {"kind": "archive", "path": str(path), "sha256": digest}
    root = work / "extracted"
    root.mkdir()
    try:
        safe_extract(
            archive,
            root,
            max_total_bytes=params.max_archive_bytes,
            max_members=params.max_archive_members,
        )
    except IngestError as e:
        raise DownloadError(str(e)) from None
    return root, identity


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


def _ingest_all(found: list[layout.Found], params: DataParams, runner: Runner) -> list[Ingested]:
    """Ingest all files, in order, on the runner's executor (files are read here, sent as bytes)."""
    job = functools.partial(
        _ingest_chunk,
        max_pixels=params.max_pixels,
        max_side=params.max_side,
        png_level=INGEST_PNG_LEVEL,
    )
    read = functools.partial(_read_chunk, max_bytes=params.max_file_bytes)
    chunks = _chunks(found)
    results: list[Ingested] = []
    with Progress(len(found), "download: decoded", log, unit="images") as progress:
        for chunk, done in zip(chunks, runner.imap(job, chunks, read), strict=True):
            results.extend(Ingested(f, *r) for f, r in zip(chunk, done, strict=True))
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


def download(
    params: DataParams,
    out_dir: Path = RAW_DIR,
    quarantine_csv: Path = QUARANTINE,
    duplicates_csv: Path = DUPLICATES,
    workers: int = 0,
    record: Path | None = SOURCE_RECORD,
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
        root, identity = source_root(params, tmp, recorded, record)
        if recorded is not None:
            identity["recorded"] = recorded
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
        found, skipped = found_layout.found, found_layout.skipped
        if found_layout.hidden:
            log.info("ignored %d hidden entries (dot files, __MACOSX)", found_layout.hidden)
        for s in skipped:
            log.warning("skipped %s: %s", s.rel, s.reason)
        if not found:
            raise DownloadError(
                f"data.source: no images of {list(params.classes)} found in {params.source}"
            )
        results = _ingest_all(found, params, runner)

        bad = [r for r in results if r.reason is not None]
        good = [r for r in results if r.reason is None]
        conflicts = label_conflicts(good)
        for r in bad:
            log.warning("quarantined %s: %s", r.found.rel, r.reason)
        for i in conflicts:
            log.warning("label conflict: %s (%s)", good[i].found.rel, good[i].found.label)
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
    write_csv(quarantine_csv, _quarantine_rows(skipped, bad, conflicts, good), QUARANTINE_FIELDS)
    counts = {
        "images": len(rows),
        "quarantined": len(bad) + len(skipped) + len(conflicts),
        "duplicate_groups": len(dup_rows),
        "patients": len({r["patient_id"] for r in rows}),
    }
    log.info("ingested %s", counts)
    return counts


def main() -> None:
    """Run the stage from params.yaml."""
    params = load_params()
    download(params.data, compute=params.compute)


def _sigterm(signum: int, frame: object) -> None:
    """SIGTERM (dvc/Prefect cancel) unwinds like Ctrl-C: work and staged folders are removed."""
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    import signal

    from xray.core.runtime import run_stage

    signal.signal(signal.SIGTERM, _sigterm)
    run_stage(main)
