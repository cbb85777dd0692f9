"""Stage `corrupt`: materialize corrupted copies of the test split as PNG images.

dvc.yaml's cmd names the files: the test split (``--test``), the raw images it lists
(``--raw``) and the output folder (``--corrupted``: one stored zip per family and severity
plus manifest.csv). The work is done by xray/perturbations/materialize.py with the
corruptions of xray/perturbations/corruptions.py.
"""

from __future__ import annotations

PATHS = ("test", "raw", "corrupted")
"""The `--name PATH` options of dvc.yaml's cmd for this stage."""


def main() -> None:
    """Run the stage from params.yaml, with the paths dvc.yaml's cmd passes."""
    from xray.core.params import load_params
    from xray.core.stage import stage_paths
    from xray.perturbations.materialize import corrupt

    params = load_params()
    paths = stage_paths("corrupt", PATHS)
    corrupt(params.corrupt, paths["test"], paths["raw"], paths["corrupted"], compute=params.compute)


if __name__ == "__main__":
    from xray.core.runtime import run_stage
    from xray.core.stage import unwind_on_sigterm

    unwind_on_sigterm()  # a terminated run leaves the previous output untouched
    run_stage(main)
