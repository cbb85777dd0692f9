"""Models: architectures, model files, input pipeline, training, resume, distribution, inference."""
