"""Running the stages through DVC: status, repro, stage logs, overrides, stage deps."""
