"""Models: architectures, model files, the input pipeline, training, resume, distribution, inference."""
