"""Stage `download`: bring the images in from `data.source`, validate and normalize them.

dvc.yaml's cmd names the files: the source record `xray probe` writes (``--source-record``),
the raw image folder (``--raw``) and the quarantine and duplicates reports. The work is
done by xray/data/intake/ingest.py (ingesting, screening, writing data/raw) over
xray/data/intake/source.py (the source's identity and getting it).
"""

from __future__ import annotations

PATHS = ("source_record", "raw", "quarantine", "duplicates")
"""The `--name PATH` options of dvc.yaml's cmd for this stage."""


def main() -> None:
    """Run the stage from params.yaml, with the paths dvc.yaml's cmd passes."""
    from xray.core.params import load_params
    from xray.core.stage import stage_paths
    from xray.data.intake.ingest import download

    params = load_params()
    paths = stage_paths("download", PATHS)
    download(
        params.data,
        paths["raw"],
        paths["quarantine"],
        paths["duplicates"],
        record=paths["source_record"],
        compute=params.compute,
    )


if __name__ == "__main__":
    from xray.core.runtime import run_stage
    from xray.core.stage import unwind_on_sigterm

    unwind_on_sigterm()  # a terminated run leaves the previous output untouched
    run_stage(main)
