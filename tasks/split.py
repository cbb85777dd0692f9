"""Stage `split`: patient-grouped, class-stratified, seeded train/val/test split.

dvc.yaml's cmd names the files: the raw manifest (``--manifest``), the split folder
(``--splits``) and the counts report (``--counts-json``, ``--counts-csv``). The work is
done by xray/data/splitting.py.
"""

from __future__ import annotations

PATHS = ("manifest", "splits", "counts_json", "counts_csv")
"""The `--name PATH` options of dvc.yaml's cmd for this stage."""


def main() -> None:
    """Run the stage from params.yaml, with the paths dvc.yaml's cmd passes."""
    from xray.core.params import load_params
    from xray.core.stage import stage_paths
    from xray.data.splitting import split

    params = load_params()
    paths = stage_paths("split", PATHS)
    split(
        params.split,
        paths["manifest"],
        paths["splits"],
        paths["counts_json"],
        paths["counts_csv"],
        data=params.data,
    )


if __name__ == "__main__":
    from xray.core.runtime import run_stage

    run_stage(main)
