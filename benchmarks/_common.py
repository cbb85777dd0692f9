"""Shared helpers of the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

OUT_DIR = Path("reports/benchmarks")


def machine() -> dict[str, Any]:
    """CPU count and the load average (the CPU may be shared: read figures with it)."""
    return {
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_report(name: str, result: dict[str, Any]) -> Path:
    """Print the result as JSON and write it to reports/benchmarks/NAME.json."""
    from tasks.io import write_json

    result = {"benchmark": name, **result, "machine_end": machine()}
    path = OUT_DIR / f"{name}.json"
    write_json(path, result)
    print(json.dumps(result, indent=2))
    return path
