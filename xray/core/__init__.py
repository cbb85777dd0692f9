"""Foundation: params schema, file helpers, hashing, progress, errors, the executor, git."""
