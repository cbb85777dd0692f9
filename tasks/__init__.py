"""The six DVC stage entry points (`python -m tasks.<stage>`), one thin module each.

Importing this package does nothing: each stage's main() imports the library itself and is run
by `run_stage` (xray/core/runtime.py), which quiets TensorFlow before anything loads it.
"""
