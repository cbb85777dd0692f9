"""Stage `finetune`: freeze most of the base model and adapt the rest to corrupted images.

Its files come from dvc.yaml's cmd (`--train`, `--val`, `--raw`: the image root the split
files' paths are relative to, `--base`, `--model`, `--live`, `--layers`: the layer table);
the resume state goes beside the model (models/.finetune.work). The machinery is
xray/models/finetune_training.py (the loop) and xray/models/finetuning.py (its parts).
"""

from __future__ import annotations

STAGE = "finetune"
PATHS = ("train", "val", "raw", "base", "model", "live", "layers")


def main() -> None:
    """Run the stage from params.yaml and the paths of its dvc.yaml cmd."""
    from xray.adaptation.references import source_references
    from xray.core.params import load_params
    from xray.core.stage import stage_paths
    from xray.models.finetune_training import finetune
    from xray.models.resume import work_dir_for

    paths = stage_paths(STAGE, PATHS)
    finetune(
        load_params(),
        train_csv=paths["train"],
        val_csv=paths["val"],
        raw_dir=paths["raw"],
        base_path=paths["base"],
        model_path=paths["model"],
        live_dir=paths["live"],
        work_dir=work_dir_for(paths["model"], STAGE),
        layers_csv=paths["layers"],
        references=source_references,
    )


if __name__ == "__main__":
    from xray.core.runtime import run_stage

    run_stage(main)
