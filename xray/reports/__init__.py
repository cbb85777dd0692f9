"""What evaluate reports: metrics, robustness, bootstrap, figures, proxy, lineage, model card."""
