"""Stage `train_base`: train the base classifier on the train split, select on val only.

Its files come from dvc.yaml's cmd (`--train`, `--val`, `--raw`: the image root the split
files' paths are relative to, `--model`, `--live`); the resume state goes beside the model
(models/.train_base.work). The machinery is xray/models/base_training.py.
"""

from __future__ import annotations

STAGE = "train_base"
PATHS = ("train", "val", "raw", "model", "live")


def main() -> None:
    """Run the stage from params.yaml and the paths of its dvc.yaml cmd."""
    from xray.adaptation.references import source_references
    from xray.core.params import load_params
    from xray.core.stage import stage_paths
    from xray.models.base_training import train_base
    from xray.models.resume import work_dir_for

    paths = stage_paths(STAGE, PATHS)
    train_base(
        load_params(),
        train_csv=paths["train"],
        val_csv=paths["val"],
        raw_dir=paths["raw"],
        model_path=paths["model"],
        live_dir=paths["live"],
        work_dir=work_dir_for(paths["model"], STAGE),
        references=source_references,
    )


if __name__ == "__main__":
    from xray.core.runtime import run_stage

    run_stage(main)
