"""End-to-end tests of the `download` stage: URL, archive and folder sources, change
detection through data/source.json, quarantine and the bad-fraction guard."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from conftest import loopback_server
from PIL import Image

import xray.data.intake.ingest as ingest
import xray.data.intake.source as dl
from xray.core.io import read_csv
from xray.core.params import DataParams
from xray.data.intake.ingest import download
from xray.data.intake.source import DownloadError, probe

ROOT = Path(__file__).resolve().parents[1]
REAL_ZIP = Path(__file__).resolve().parents[2] / "shared/datasets/chest_xray_224_train.zip"
REAL_IMAGES = 5216
SIDE = 40
KAGGLE = {  # split -> class -> file names (Kermany naming)
    "train": {
        "NORMAL": ["IM-0115-0001.jpeg", "IM-0117-0001.jpeg", "NORMAL2-IM-0120-0001.jpeg"],
        "PNEUMONIA": [
            "person1_bacteria_1.jpeg",
            "person1_bacteria_2.jpeg",
            "person2_virus_3.jpeg",
            "person3_bacteria_10.jpeg",
        ],
    },
    "val": {
        "NORMAL": ["NORMAL2-IM-1427-0001.jpeg"],
        "PNEUMONIA": ["person1946_bacteria_4874.jpeg"],
    },
    "test": {
        "NORMAL": ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg"],
        "PNEUMONIA": ["person100_bacteria_475.jpeg", "person101_virus_187.jpeg"],
    },
}
N_KAGGLE = sum(len(names) for classes in KAGGLE.values() for names in classes.values())


def _jpeg(seed: int, side: int = SIDE) -> bytes:
    """A small distinct grayscale JPEG."""
    arr = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _kaggle_zip() -> bytes:
    """Kaggle's chest-xray-pneumonia zip in miniature: a nested copy and __MACOSX junk."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        seed = 0
        for prefix in ("chest_xray", "chest_xray/chest_xray"):
            seed = 0
            for split, classes in KAGGLE.items():
                for cls, names in classes.items():
                    for name in names:
                        seed += 1
                        zf.writestr(f"{prefix}/{split}/{cls}/{name}", _jpeg(seed))
                        zf.writestr(f"__MACOSX/{prefix}/{split}/{cls}/._{name}", b"\x00\x05junk")
        zf.writestr("chest_xray/.DS_Store", b"\x00\x00\x00\x01Bud1")
    return buf.getvalue()


# --------------------------------------------------------------------------- HTTP server


@dataclass
class Served:
    """What the loopback server serves and how it misbehaves; read by the handler."""

    body: bytes = b""
    etag: str = '"v1"'
    fail_first: int = 0  # answer 500 to this many GETs
    head_fail_first: int = 0  # answer 503 to this many HEADs
    cut_after: int | None = None  # the first successful GET stops after this many bytes
    corrupt: bool = False  # flip the first bytes (same length)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def gets(self) -> list[dict[str, str]]:
        """Headers of the GETs seen."""
        return [h for m, h in self.requests if m == "GET"]


class Handler(BaseHTTPRequestHandler):
    """Serves Served.body at any path ending in .zip, with HEAD, Range and faults."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""

    def _served(self) -> Served:
        return self.server.state  # type: ignore[attr-defined]

    def _headers(self, status: int, length: int, extra: dict[str, str] | None = None) -> None:
        s = self._served()
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", s.etag)
        self.send_header("Last-Modified", "Mon, 01 Jan 2018 00:00:00 GMT")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self) -> None:
        """Validators and size only."""
        s = self._served()
        s.requests.append(("HEAD", dict(self.headers)))
        heads = sum(1 for m, _ in s.requests if m == "HEAD")
        self._headers(503 if heads <= s.head_fail_first else 200, len(s.body))

    def do_GET(self) -> None:
        """The body (ranged when asked with a matching If-Range), or a fault."""
        s = self._served()
        s.requests.append(("GET", dict(self.headers)))
        n = len(s.gets())
        if n <= s.fail_first:
            self._headers(500, 0)
            return
        body = bytes(b ^ 0xFF for b in s.body[:256]) + s.body[256:] if s.corrupt else s.body
        start, status, extra = 0, 200, {}
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        if rng and if_range in (None, s.etag):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            status, extra = 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        chunk = body[start:]
        self._headers(status, len(chunk), extra)
        if s.cut_after is not None and n == s.fail_first + 1:
            self.wfile.write(chunk[: s.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    """A loopback server on a free port; yields (base URL, Served)."""
    served = Served()
    with loopback_server(Handler, served) as url:
        yield url, served


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Retry sleeps of milliseconds instead of seconds; a private download cache."""
    monkeypatch.setattr(dl, "FETCH_BACKOFF_S", 0.01)
    monkeypatch.setattr(dl, "DOWNLOAD_CACHE", tmp_path_factory.mktemp("downloads"))


# --------------------------------------------------------------------------- helpers


@dataclass
class Outs:
    """The stage's output paths under one tmp folder."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def record(self) -> Path:
        return self.root / "data" / "source.json"

    @property
    def quarantine(self) -> Path:
        return self.root / "reports" / "quarantine.csv"

    @property
    def duplicates(self) -> Path:
        return self.root / "reports" / "duplicates.csv"

    def run(self, params: DataParams, workers: int = 1) -> dict[str, int]:
        """Run the stage function with these paths."""
        return download(
            params,
            out_dir=self.raw,
            quarantine_csv=self.quarantine,
            duplicates_csv=self.duplicates,
            workers=workers,
            record=self.record,
        )

    def snapshot(self) -> dict[str, bytes]:
        """Every file under data/raw, relative path -> bytes."""
        return {
            p.relative_to(self.raw).as_posix(): p.read_bytes()
            for p in sorted(self.raw.rglob("*"))
            if p.is_file()
        }


def _folder(root: Path, good: int, bad: dict[str, bytes] | None = None) -> Path:
    """A flat folder of class subfolders with `good` images per class, plus broken files."""
    for c, cls in enumerate(("NORMAL", "pneumonia")):  # case differs from params on purpose
        d = root / cls
        d.mkdir(parents=True)
        for i in range(good):
            (d / f"person{c * 100 + i}_bacteria_{i}.jpeg").write_bytes(_jpeg(1000 * c + i))
    for name, data in (bad or {}).items():
        (root / "NORMAL" / name).write_bytes(data)
    return root


BROKEN = {
    "zero.jpeg": b"",
    "truncated.jpeg": _jpeg(99, side=64)[:300],
    "text.jpeg": b"this is a text file, not a jpeg\n",
}
BROKEN_REASONS = {
    "NORMAL/text.jpeg": "not_an_image",
    "NORMAL/truncated.jpeg": "truncated",
    "NORMAL/zero.jpeg": "empty",
}


# --------------------------------------------------------------------------- URL source


def test_url_with_faults_ingests_once_and_reprobe_downloads_nothing(
    server: tuple[str, Served], tmp_path: Path
) -> None:
    """500 first, then a cut transfer (resumed by range): every image ingested exactly once,
    the nested copy and __MACOSX ignored; a second probe of the same URL fetches no body."""
    base, s = server
    s.body, s.fail_first, s.cut_after = _kaggle_zip(), 1, 2000
    params = DataParams(source=f"{base}/chest-xray-pneumonia.zip", max_bad_fraction=0.0)
    out = Outs(tmp_path)

    changed, identity = probe(params, out.record)
    assert changed
    assert identity == {
        "source": params.source,
        "kind": "url",
        "etag": '"v1"',
        "last_modified": "Mon, 01 Jan 2018 00:00:00 GMT",
        "size": len(s.body),
    }
    counts = out.run(params)
    assert counts == {
        "images": N_KAGGLE,
        "quarantined": 0,
        "duplicate_groups": 0,
        "patients": N_KAGGLE - 1,  # person1 has two images
    }
    gets = s.gets()
    assert len(gets) == 3  # 500, cut short, resumed
    assert gets[2]["Range"] == "bytes=2000-"
    rows = read_csv(out.raw / "manifest.csv")
    by_split = {
        split: sorted(r["path"].rsplit("/", 1)[-1] for r in rows if r["source_split"] == split)
        for split in KAGGLE
    }
    assert by_split == {
        split: sorted(n.replace(".jpeg", ".png") for names in cl.values() for n in names)
        for split, cl in KAGGLE.items()
    }
    assert all((out.raw / r["path"]).is_file() for r in rows)
    assert read_csv(out.quarantine) == []

    record_before = out.record.read_bytes()
    n_requests = len(s.requests)
    changed, _ = probe(params, out.record)
    assert not changed
    assert out.record.read_bytes() == record_before
    assert [m for m, _ in s.requests[n_requests:]] == ["HEAD"]  # no body fetched


def test_stage_rerun_resumes_the_partial_download(
    server: tuple[str, Served], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's HEAD retries a 503; a transfer whose retries run out is resumed by the
    rerun from the bytes kept in the download cache, with If-Range."""
    base, s = server
    s.body, s.cut_after, s.head_fail_first = _kaggle_zip(), 2000, 1
    params = DataParams(source=f"{base}/data.zip")
    out = Outs(tmp_path)
    probe(params, out.record)
    assert [m for m, _ in s.requests] == ["HEAD", "HEAD"]
    monkeypatch.setattr(dl, "FETCH_RETRIES", 0)
    with pytest.raises(DownloadError, match="giving up after 0 retries") as ei:
        out.run(params)
    assert "\n" not in str(ei.value)
    assert not out.raw.exists()
    assert [p.stat().st_size for p in dl.DOWNLOAD_CACHE.glob("*/part")] == [2000]
    assert out.run(params)["images"] == N_KAGGLE
    gets = s.gets()
    assert len(gets) == 2
    assert (gets[1]["Range"], gets[1]["If-Range"]) == ("bytes=2000-", '"v1"')
    assert list(dl.DOWNLOAD_CACHE.iterdir()) == []


def test_url_change_is_detected(server: tuple[str, Served], tmp_path: Path) -> None:
    """A new ETag rewrites the record; a stale record stops the stage before any download."""
    base, s = server
    s.body = _kaggle_zip()
    params = DataParams(source=f"{base}/data.zip")
    out = Outs(tmp_path)
    probe(params, out.record)
    out.run(params)
    before = out.snapshot()

    s.etag = '"v2"'
    gets = len(s.gets())
    with pytest.raises(DownloadError, match=r"changed since it was recorded .*\(etag") as ei:
        out.run(params)
    assert "\n" not in str(ei.value)
    assert len(s.gets()) == gets  # refused before downloading
    assert out.snapshot() == before
    changed, identity = probe(params, out.record)
    assert changed
    assert identity["etag"] == '"v2"'
    assert out.run(params)["images"] == N_KAGGLE


def test_record_of_another_source_is_refused(server: tuple[str, Served], tmp_path: Path) -> None:
    """data.source edited without probing: one line naming data.source; nothing requested."""
    base, s = server
    s.body = _kaggle_zip()
    out = Outs(tmp_path)
    probe(DataParams(), out.record)  # records `synthetic`
    params = DataParams(source=f"{base}/data.zip")
    with pytest.raises(DownloadError) as ei:
        out.run(params)
    msg = str(ei.value)
    assert msg.startswith(f"data.source is '{params.source}' but ")
    assert "records 'synthetic'; run `xray probe`" in msg
    assert s.requests == []
    assert not out.raw.exists()


def test_checksum_mismatch_keeps_nothing(server: tuple[str, Served], tmp_path: Path) -> None:
    """Wrong bytes for a pinned sha256: one-line error, no data/raw, no reports."""
    base, s = server
    s.body = _kaggle_zip()
    s.corrupt = True
    params = DataParams(source=f"{base}/data.zip", sha256=hashlib.sha256(s.body).hexdigest())
    out = Outs(tmp_path)
    _, identity = probe(params, out.record)
    assert identity == {"source": params.source, "kind": "url", "sha256": params.sha256}
    assert s.requests == []  # a pinned URL is identified without the network
    with pytest.raises(DownloadError, match="sha256 mismatch") as ei:
        out.run(params)
    assert "\n" not in str(ei.value)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "data",
        "data/source.json",
    ]


def test_url_without_archive_suffix(server: tuple[str, Served], tmp_path: Path) -> None:
    """An archive served under a name without a suffix is recognised by its bytes."""
    base, s = server
    s.body = _kaggle_zip()
    params = DataParams(source=f"{base}/download?id=42&format=zip")
    out = Outs(tmp_path)
    probe(params, out.record)
    assert out.run(params)["images"] == N_KAGGLE


# --------------------------------------------------------------------------- local sources


def test_salted_folder_runs_to_the_end(tmp_path: Path) -> None:
    """Zero-byte, truncated and text-as-jpeg files are quarantined with reasons; the rest in."""
    src = _folder(tmp_path / "export", good=10, bad=BROKEN)
    params = DataParams(source=str(src), max_bad_fraction=0.2)
    out = Outs(tmp_path)
    probe(params, out.record)
    counts = out.run(params, workers=2)
    assert counts["images"] == 20
    assert counts["quarantined"] == 3
    got = {r["path"]: r["reason"] for r in read_csv(out.quarantine)}
    assert got == BROKEN_REASONS
    rows = read_csv(out.raw / "manifest.csv")
    assert {r["label"] for r in rows} == {"NORMAL", "PNEUMONIA"}
    assert not any(r["path"].split("/")[-1].startswith(("zero", "text", "truncated")) for r in rows)


def test_process_pool_matches_serial(tmp_path: Path) -> None:
    """The process pool (enough files to use it) writes exactly what the serial path writes."""
    n_per_class = ingest.CHUNK + 2  # 2 * CHUNK files in all, plus the broken ones
    src = _folder(tmp_path / "export", good=n_per_class, bad=BROKEN)
    params = DataParams(source=str(src), max_bad_fraction=0.1)
    serial, pooled = Outs(tmp_path / "serial"), Outs(tmp_path / "pooled")
    for out, workers in ((serial, 1), (pooled, 2)):
        probe(params, out.record)
        assert out.run(params, workers=workers)["images"] == 2 * n_per_class
    assert pooled.snapshot() == serial.snapshot()
    assert pooled.quarantine.read_bytes() == serial.quarantine.read_bytes()


def test_too_many_broken_keeps_previous_data(tmp_path: Path) -> None:
    """Above max_bad_fraction: one line naming the key; the earlier data/raw untouched."""
    out = Outs(tmp_path)
    good = DataParams(source=str(_folder(tmp_path / "good", good=4)))
    probe(good, out.record)
    out.run(good)
    before = out.snapshot()
    quarantine_before = out.quarantine.read_bytes()

    bad = DataParams(
        source=str(_folder(tmp_path / "bad", good=4, bad=BROKEN)), max_bad_fraction=0.1
    )
    probe(bad, out.record)
    with pytest.raises(DownloadError) as ei:
        out.run(bad)
    msg = str(ei.value)
    assert msg.startswith("data.max_bad_fraction: 3 of 11 images are broken (27.3% > 10.0%)")
    assert "\n" not in msg
    assert out.snapshot() == before
    assert out.quarantine.read_bytes() == quarantine_before
    assert sorted(p.name for p in out.raw.parent.iterdir()) == ["raw", "source.json"]


def test_folder_and_archive_identity(tmp_path: Path) -> None:
    """A folder's tree hash and an archive's sha256 change with content, not with junk."""
    src = _folder(tmp_path / "export", good=2)
    params = DataParams(source=str(src))
    record = tmp_path / "source.json"
    changed, first = probe(params, record)
    assert changed and first["kind"] == "folder" and first["files"] == 4
    (src / ".DS_Store").write_bytes(b"junk")
    assert probe(params, record) == (False, first)
    (src / "NORMAL" / "person0_bacteria_0.jpeg").write_bytes(_jpeg(12345))
    changed, second = probe(params, record)
    assert changed and second["tree_sha256"] != first["tree_sha256"]

    arc = tmp_path / "data.zip"
    arc.write_bytes(_kaggle_zip())
    params = DataParams(source=str(arc))
    changed, ident = probe(params, record)
    assert changed
    assert ident == {
        "source": str(arc),
        "kind": "archive",
        "sha256": hashlib.sha256(arc.read_bytes()).hexdigest(),
        "size": arc.stat().st_size,
    }


def test_local_archive_checksum_mismatch(tmp_path: Path) -> None:
    """A pinned sha256 that a local archive does not have: probe and stage name data.sha256."""
    arc = tmp_path / "data.zip"
    arc.write_bytes(_kaggle_zip())
    params = DataParams(source=str(arc), sha256="0" * 64)
    out = Outs(tmp_path / "project")
    with pytest.raises(DownloadError, match=r"^data\.sha256: .*data\.zip has sha256 [0-9a-f]{64}"):
        probe(params, out.record)
    assert not out.root.exists()
    out.record.parent.mkdir(parents=True)
    out.record.write_text(f'{{"source": "{arc}"}}')
    with pytest.raises(DownloadError, match=r"^data\.sha256: "):
        out.run(params)
    assert sorted(p.name for p in out.root.rglob("*")) == ["data", "source.json"]


def test_an_archive_rewritten_while_it_is_extracted_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arc = tmp_path / "data.zip"
    arc.write_bytes(_kaggle_zip())
    params = DataParams(source=str(arc))
    out = Outs(tmp_path / "project")
    probe(params, out.record)
    real_extract = dl._extract

    def extract(*args, **kwargs):  # type: ignore[no-untyped-def]
        root = real_extract(*args, **kwargs)
        arc.write_bytes(arc.read_bytes() + b"\0")  # appended to while it was read
        return root

    monkeypatch.setattr(dl, "_extract", extract)
    with pytest.raises(DownloadError, match=r"data\.zip is not the archive it recorded"):
        out.run(params)
    assert not out.raw.exists()


def test_changed_folder_after_probe_is_refused(tmp_path: Path) -> None:
    """A folder edited after `xray probe` stops the stage (the record would lie)."""
    src = _folder(tmp_path / "export", good=2)
    params = DataParams(source=str(src))
    out = Outs(tmp_path)
    probe(params, out.record)
    (src / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(_jpeg(777))
    with pytest.raises(DownloadError, match=r"changed since it was recorded .*\(tree_sha256"):
        out.run(params)
    assert not out.raw.exists()


@pytest.mark.parametrize(
    ("when", "change", "message"),
    [
        ("before_read", "rewrite", r"person0_bacteria_0\.jpeg is not the file it recorded"),
        ("after_read", "rewrite", r"person0_bacteria_0\.jpeg rewritten"),
        ("after_read", "delete", r"person0_bacteria_0\.jpeg gone"),
        ("after_read", "move", r"NORMAL/person0_bacteria_0\.jpeg gone \(and 1 more\)"),
    ],
)
def test_a_folder_changed_while_it_is_ingested_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, change: str, message: str
) -> None:
    """Issue 24 item 3: a folder rewritten during `download` (after the record was checked)
    fails with one line naming the file; nothing is written."""
    src = _folder(tmp_path / "export", good=2)
    target = src / "NORMAL" / "person0_bacteria_0.jpeg"
    params = DataParams(source=str(src))
    out = Outs(tmp_path)
    probe(params, out.record)

    def act() -> None:
        if change == "rewrite":
            target.write_bytes(_jpeg(555))  # another valid image: it would be ingested
        elif change == "delete":
            target.unlink()
        else:  # moved under the other class folder: its label would change silently
            target.rename(src / "pneumonia" / target.name)

    real_find, real_ingest = ingest.find_images, ingest._ingest_all

    def find(*args, **kwargs):  # type: ignore[no-untyped-def]
        found = real_find(*args, **kwargs)
        if when == "before_read":
            act()
        return found

    def ingest_all(*args, **kwargs):  # type: ignore[no-untyped-def]
        results = real_ingest(*args, **kwargs)
        if when == "after_read":
            act()
        return results

    monkeypatch.setattr(ingest, "find_images", find)
    monkeypatch.setattr(ingest, "_ingest_all", ingest_all)
    with pytest.raises(
        DownloadError, match=rf"^data\.source changed while it was read: .*{message}"
    ):
        out.run(params)
    assert not out.raw.exists() and not out.quarantine.exists()


def test_many_broken_files_log_ten_lines_and_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 24 item 13: 40 broken files give ten warning lines and one with the count, then
    the one-line error; not 40 lines."""
    import logging

    src = _folder(tmp_path / "export", good=2, bad={f"z{i:02}.jpeg": b"" for i in range(40)})
    (src / "NORMAL" / "notes.txt").write_text("not an image")
    params = DataParams(source=str(src))
    out = Outs(tmp_path)
    probe(params, out.record)
    too_many = r"^data\.max_bad_fraction: 40 of 44 images"
    with (
        caplog.at_level(logging.WARNING, "xray.download"),
        pytest.raises(DownloadError, match=too_many),
    ):
        out.run(params)
    quarantined = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert quarantined[:2] == [
        "quarantined NORMAL/z00.jpeg: empty",
        "quarantined NORMAL/z01.jpeg: empty",
    ]
    assert len(quarantined) == 11
    assert quarantined[-1].startswith("quarantined 30 more (40 in all; the quarantine report")
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        "skipped NORMAL/notes.txt: not_an_image_type"
    ]


def test_missing_local_path(tmp_path: Path) -> None:
    """A missing folder or archive: one line naming data.source, before anything is written."""
    params = DataParams(source=str(tmp_path / "nope.zip"))
    out = Outs(tmp_path / "project")
    with pytest.raises(DownloadError, match=r"^data\.source: .*nope\.zip does not exist$"):
        probe(params, out.record)
    with pytest.raises(DownloadError, match=r"^data\.source: .*nope\.zip does not exist$"):
        out.run(params)
    assert not out.root.exists()


def test_xray_probe_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`xray probe` writes data/source.json once, then reports it unchanged."""
    from xray.cli.main import main

    src = _folder(tmp_path / "export", good=1)
    (tmp_path / "params.yaml").write_text(f"data:\n  source: {src}\n")
    shutil.copy(ROOT / "dvc.yaml", tmp_path)  # names the record: download's --source-record
    assert main(["probe", "--workdir", str(tmp_path)]) == 0
    first = (tmp_path / "data" / "source.json").read_text()
    assert main(["probe", "--workdir", str(tmp_path)]) == 0
    assert (tmp_path / "data" / "source.json").read_text() == first
    lines = capsys.readouterr().out.splitlines()
    assert "changed, recorded" in lines[0] and "unchanged" in lines[1]
    assert main(["probe", "--workdir", str(tmp_path), "--source", "synthetic"]) == 0
    assert '"source": "synthetic"' in (tmp_path / "data" / "source.json").read_text()
    assert main(["probe", "--workdir", str(tmp_path), "--source", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["probe", "--workdir", str(tmp_path), "--source", "ftp://h/x.zip"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --source: data.source: URL scheme 'ftp' is not http or https "
        "(got 'ftp://h/x.zip')\n"
    )


# --------------------------------------------------------------------------- real archive


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ZIP.exists(), reason=f"{REAL_ZIP} not present")
def test_real_archive_over_loopback(server: tuple[str, Served], tmp_path: Path) -> None:
    """The real training archive served over loopback: 5,216 images in, second probe no-op."""
    base, s = server
    s.body = REAL_ZIP.read_bytes()
    params = DataParams(
        source=f"{base}/chest_xray_224_train.zip",
        sha256="32b38995eccc7cf57fd33790f5ccbd5012a56ea5eb4adc2dbe75c4d6cea6db81",
    )
    out = Outs(tmp_path)
    assert probe(params, out.record)[0]
    counts = out.run(params, workers=0)
    assert counts["images"] == REAL_IMAGES
    assert counts["quarantined"] == 0
    labels = [r["label"] for r in read_csv(out.raw / "manifest.csv")]
    assert (labels.count("NORMAL"), labels.count("PNEUMONIA")) == (1341, 3875)
    assert len(s.gets()) == 1
    assert probe(params, out.record)[0] is False
    assert len(s.gets()) == 1


# --------------------------------------------------------------------------- through DVC


def _project(tmp_path: Path) -> Path:
    """A throwaway git+DVC copy of this project's pipeline definition and code."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "tasks", "xray"):
        src = repo / name
        if src.is_dir():
            shutil.copytree(src, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, proj / name)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=proj, check=True, env=_env())
    return proj


def _env() -> dict[str, str]:
    """The environment of stage commands (this interpreter first on PATH)."""
    from flows.pipeline import stage_env

    return stage_env()


def _repro(proj: Path, stage: str, *, ok: bool = True) -> str:
    """`dvc repro STAGE` in proj; its combined output (asserting the exit status)."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", stage],
        cwd=proj,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r.stdout + r.stderr


def _probe(proj: Path) -> bool:
    """Probe the project copy's data.source; True when data/source.json changed."""
    from xray.core.params import load_params

    return probe(load_params(proj / "params.yaml").data, proj / "data" / "source.json")[0]


@pytest.mark.slow
def test_dvc_repro_noop_when_source_unchanged(tmp_path: Path) -> None:
    """Through DVC: a re-probe of an unchanged folder leaves download+split cached; a changed
    folder reruns both; data.source edited without a probe fails with the one-line hint."""
    proj = _project(tmp_path)
    src = _folder(tmp_path / "export", good=30)
    (proj / "params.yaml").write_text(
        f"data:\n  source: {src}\nsplit:\n  val_fraction: 0.2\n  test_fraction: 0.2\n"
    )
    assert _probe(proj)
    out = _repro(proj, "split")
    assert "Running stage 'download'" in out and "Running stage 'split'" in out

    assert _probe(proj) is False
    assert "Running stage" not in _repro(proj, "split")

    (src / "NORMAL" / "IM-0999-0001.jpeg").write_bytes(_jpeg(4242))
    assert _probe(proj)
    out = _repro(proj, "split")
    assert "Running stage 'download'" in out and "Running stage 'split'" in out
    assert len(read_csv(proj / "data" / "raw" / "manifest.csv")) == 61

    (proj / "params.yaml").write_text("data:\n  source: synthetic\n")
    out = _repro(proj, "download", ok=False)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: data.source is 'synthetic' but data/source.json records '{src}'; "
        "run `xray probe` to record it"
    ]
    # DVC removed data/raw before the failed command; its cache still holds the last one
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "dvc", "checkout", "download"], cwd=proj, env=_env(), check=True
    )
    assert len(read_csv(proj / "data" / "raw" / "manifest.csv")) == 61
