"""Image damage and acquisition differences: corruptions, site shifts, training augmentation."""
