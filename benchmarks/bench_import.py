"""Time importing the node pack the way ComfyUI does (against the test stub), in fresh processes.

    python benchmarks/bench_import.py [--repeat 5]

Target: well under 1 s (ComfyUI's start-up lists slow packs); the test suite checks only the
behaviour that keeps it fast (no torch, numpy or PIL at import), not the time.
Not part of the test run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "tests" / "comfy_stub"

CODE = (f"import sys, time; sys.path.insert(0, {str(STUB)!r}); import importlib.util as u; t = time.perf_counter(); "
        f"s = u.spec_from_file_location('p', {str(ROOT / '__init__.py')!r}, submodule_search_locations=[{str(ROOT)!r}]); "
        "m = u.module_from_spec(s); sys.modules['p'] = m; s.loader.exec_module(m); print(time.perf_counter() - t)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    times = [float(subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, cwd="/").stdout)
             for _ in range(args.repeat)]
    print(f"pack import: best {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s over {len(times)} runs "
          f"(target < 1 s)")


if __name__ == "__main__":
    main()
