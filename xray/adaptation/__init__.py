"""Adaptation to unlabeled target images: BatchNorm statistics, TENT, label shift."""
