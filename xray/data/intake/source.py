"""The download stage's source: its identity, the probe that records it, and getting it.

The source (`data.source`) is `synthetic` (generated here), a local folder, a local archive or
an http(s) URL of one. Change detection: `probe` records the source's identity (URL +
ETag/Last-Modified/size or the pinned sha256; a local archive's sha256; a folder's tree hash)
in the stage's source record (``data/source.json``, named by dvc.yaml's download cmd), rewriting
it only when the identity changed. That small file is a dependency of the stage in dvc.yaml, so
an unchanged source leaves the whole pipeline cached and a changed one reruns it. `xray run`
probes before the stage; after editing ``data.source`` by hand run ``xray probe`` (the stage
refuses a record of another source).

A URL is fetched by xray/data/intake/fetch.py, the only place that retries: transient errors
(connection errors, timeouts, HTTP 5xx/408/429) up to FETCH_RETRIES times with backoff,
permanent ones fail at once. Its partial file is kept under ``.xray/downloads/<key>/`` so a
rerun resumes. Archives are extracted by xray/data/intake/archive.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from xray.core.errors import WorkError
from xray.core.hashing import file_sha256
from xray.core.io import write_json
from xray.core.params import PARAMS_FILE, DataParams, load_params, parse_params
from xray.core.stage import dvc_yaml_paths
from xray.data.intake import layout
from xray.data.intake.archive import safe_extract
from xray.data.intake.entries import IngestError

log = logging.getLogger("xray.download")

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
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


class DownloadError(WorkError):
    """The source cannot be used: one line naming the file, member or key."""


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


def tree_files(folder: Path) -> dict[str, str]:
    """Each entry of a folder (relative path, walk order) -> its file's sha256, or `<kind>`.

    Walked by the intake policy (xray/data/intake/layout.py): links are followed inside the folder
    only, hidden and junk entries are skipped, and entries that are not regular files (FIFOs,
    sockets, devices, links out) are named by kind, never opened.
    """
    base = folder.resolve()
    walker = layout.Walker(base, str(folder))
    files: dict[str, str] = {}
    try:
        for e in walker.walk(base):
            if e.kind == layout.DIR:
                continue
            rel = walker.rel(e.path)
            is_file = e.kind == layout.FILE and e.real is not None
            files[rel] = file_sha256(e.real) if is_file else f"<{e.kind}>"  # type: ignore[arg-type]
    except IngestError as e:
        raise DownloadError(f"data.source: {e}") from None
    return files


def tree_digest(files: dict[str, str]) -> tuple[str, int]:
    """The content hash of a folder's tree_files (paths + sha256s, in walk order); file count."""
    h = hashlib.sha256()
    for rel, digest in files.items():
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest(), sum(not d.startswith("<") for d in files.values())


def tree_sha256(folder: Path) -> tuple[str, int]:
    """Content hash of a folder (relative paths + file sha256s, hidden/junk skipped); file count."""
    return tree_digest(tree_files(folder))


def check_read_as_recorded(folder: Path, snapshot: dict[str, str], read: dict[str, str]) -> None:
    """Fail when a folder source changed while it was ingested (one line naming a file).

    `snapshot`: tree_files before the ingest (what the recorded identity hashes); `read`: the
    sha256 of the bytes ingest read, per relative path. Each must match, and the folder hashed
    again afterwards must still be the snapshot (a file deleted, added or rewritten meanwhile).
    """
    hint = "nothing was written; run `xray probe` again once the source is complete"
    for rel, digest in read.items():
        if snapshot.get(rel) != digest:
            raise DownloadError(
                f"data.source changed while it was read: {rel} is not the file it recorded; {hint}"
            )
    after = tree_files(folder)
    if after != snapshot:
        changed = [r for r in dict.fromkeys([*snapshot, *after]) if after.get(r) != snapshot.get(r)]
        rel = changed[0] if changed else "(the walk order)"
        what = "gone" if rel not in after else "new" if rel not in snapshot else "rewritten"
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise DownloadError(f"data.source changed while it was read: {rel} {what}{more}; {hint}")


def identify(params: DataParams, base: Path = Path(".")) -> dict[str, object]:
    """The source's identity: cheap to compute, and changes whenever its content may have."""
    source = params.source
    if source == "synthetic":  # fully described by the data.synthetic params
        return {"source": source, "kind": "synthetic"}
    if is_url(source):
        if params.sha256:  # pinned: the content is whatever has this digest
            return {"source": source, "kind": "url", "sha256": params.sha256.lower()}
        from xray.data.intake.fetch import probe
        from xray.data.intake.http_retry import FetchError

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
    params: DataParams, record: Path, base: Path = Path(".")
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
    """Probe data.source of the project in workdir (or `source` instead); one-line summary.

    The record is the download stage's `--source-record` in workdir/dvc.yaml.
    """
    data = load_params(workdir / PARAMS_FILE).data
    if source is not None:  # validated like params.yaml: a ParamsError naming data.source
        raw = {"data": {**data.model_dump(mode="json"), "source": source}}
        data = parse_params(raw, "--source").data
    record = dvc_yaml_paths("download", workdir)["source_record"]
    changed, identity = probe(data, record, base=workdir)
    state = "changed, recorded" if changed else "unchanged"
    shown = {k: v for k, v in identity.items() if k != "source"}
    where = record.relative_to(workdir)
    return f"{where}: {data.source} {state} {json.dumps(shown, sort_keys=True)}"


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
) -> tuple[Path, dict[str, object], dict[str, str] | None]:
    """Materialize the source as a folder under `work`: (folder, identity, snapshot).

    When `recorded` (the identity in `record`) is given, the source must still match it. A
    folder source is read in place: `snapshot` is its tree_files (None for the other kinds,
    which are copied under `work` first), for check_read_as_recorded after the ingest.
    """
    source = params.source
    recorded = recorded or {}
    if source == "synthetic":
        from xray.data.intake.synthetic import generate

        root = work / "synthetic"
        n = generate(root, params.synthetic, params.classes)
        log.info("generated %d synthetic images", n)
        return root, {"kind": "synthetic", **params.synthetic.model_dump(mode="json")}, None
    check_source(params)
    if is_url(source):
        archive, identity = _fetch_url(params, work, recorded, record)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            snapshot = tree_files(path)
            if record is not None:
                _verify(recorded, {"tree_sha256": tree_digest(snapshot)[0]}, record)
            return path, {"kind": "folder", "path": str(path)}, snapshot
        archive, identity = _local_archive(path, params, recorded, record)
        root = _extract(archive, work, params)
        if file_sha256(archive) != identity["sha256"]:  # rewritten while it was extracted
            raise DownloadError(
                f"data.source changed while it was read: {path} is not the archive it "
                "recorded; nothing was written, run `xray probe` again once it is complete"
            )
        return root, identity, None
    return _extract(archive, work, params), identity, None


def _fetch_url(
    params: DataParams, work: Path, recorded: dict[str, object], record: Path | None
) -> tuple[Path, dict[str, object]]:
    """Download the URL source into `work` (resumable in DOWNLOAD_CACHE): archive, identity."""
    from xray.data.intake.fetch import Limits, fetch
    from xray.data.intake.http_retry import FetchError

    source = params.source
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
            limits=Limits(
                params.download_cap, params.min_download_rate, params.download_rate_window_s
            ),
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
    return archive, identity


def _local_archive(
    path: Path, params: DataParams, recorded: dict[str, object], record: Path | None
) -> tuple[Path, dict[str, object]]:
    """A local archive source, checked against data.sha256 and the record: archive, identity."""
    digest = file_sha256(path)
    if params.sha256 and digest.lower() != params.sha256.lower():
        raise DownloadError(f"data.sha256: {path} has sha256 {digest}, expected {params.sha256}")
    _verify(recorded, {"sha256": digest}, record)
    return path, {"kind": "archive", "path": str(path), "sha256": digest}


def _extract(archive: Path, work: Path, params: DataParams) -> Path:
    """Extract the archive into work/extracted under the data.max_archive_* caps."""
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
    return root
