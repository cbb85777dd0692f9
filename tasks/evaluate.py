"""Stage `evaluate`: both models on the clean and the corrupted test set, at their val thresholds.

Its files come from dvc.yaml's cmd: the models (`--base`, `--finetuned`) and their dvclive
logs (`--base-live`, `--finetuned-live`), the test and val splits, the corrupted images'
manifest (`--corrupted`: their zips lie beside it), `--raw` (the image root the split files'
paths are relative to), `--source-json` (the source's identity, for the model card) and
`--reports` (the folder of the reports, figures and plot data dvc.yaml lists as outputs).
The machinery is xray/reports/evaluation.py.
"""

from __future__ import annotations

STAGE = "evaluate"
VARIANTS = ("base", "finetuned")
PATHS = (
    *VARIANTS,
    *(f"{v}_live" for v in VARIANTS),
    "test",
    "val",
    "corrupted",
    "raw",
    "source_json",
    "reports",
)


def main() -> None:
    """Run the stage from params.yaml and the paths of its dvc.yaml cmd."""
    from xray.core.params import load_params
    from xray.core.stage import stage_paths
    from xray.models.training import configure
    from xray.reports.evaluation import evaluate

    paths = stage_paths(STAGE, PATHS)
    params = load_params()
    configure(params.adapt.seed, deterministic=True, threads=params.train.threads)
    evaluate(
        params.evaluate,
        params.data.classes,
        models={v: paths[v] for v in VARIANTS},
        test_csv=paths["test"],
        val_csv=paths["val"],
        corrupted_manifest=paths["corrupted"],
        raw_dir=paths["raw"],
        reports=paths["reports"],
        live={v: paths[f"{v}_live"] for v in VARIANTS},
        held_out=params.corrupt.held_out,
        adapt=params.adapt,
        source_json=paths["source_json"],
    )


if __name__ == "__main__":
    from xray.core.runtime import run_stage

    run_stage(main)
