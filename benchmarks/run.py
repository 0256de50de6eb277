"""Runs every benchmark in this folder and writes ``results/bench/<name>.json``.

A benchmark is a module ``bench_<name>.py`` with ``run(workdir: Path) -> dict``; the dict must hold
``ratio``: this project's throughput divided by the reference's, both measured in the same run
(> 1 means faster), plus the raw figures. ``python benchmarks/run.py NAME ...`` runs a subset.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "results" / "bench"


def main(names: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    modules = sorted(HERE.glob("bench_*.py"))
    if names:
        modules = [m for m in modules if m.stem.removeprefix("bench_") in names]
    failed = 0
    for path in modules:
        name = path.stem.removeprefix("bench_")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            try:
                result = module.run(Path(tmp))
            except Exception as exc:  # report and carry on with the other benchmarks
                print(f"{name}: FAILED: {exc!r}", file=sys.stderr)
                failed += 1
                continue
        if "ratio" not in result:
            print(f"{name}: result has no 'ratio'", file=sys.stderr)
            failed += 1
            continue
        result.update(
            name=name,
            bench_seconds=round(time.perf_counter() - t0, 3),
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            machine={
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
            },
        )
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(f"{name}: ratio {result['ratio']:.3f} → {OUT / (name + '.json')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
