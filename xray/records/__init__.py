"""After a run: DVC remote, git records, GTO registry, Prefect artifacts, audit."""
