"""Startup time with no network: ``import kaldn.hub`` + ``load_model(name)`` for every bundled model.

Runs in a fresh subprocess whose Hub endpoint is a closed local port (``HF_ENDPOINT=http://127.0.0.1:9``), with an
empty ``HF_HOME`` and *without* offline mode: the worst ordinary case, a laptop or server that simply has no
network. Every load goes through ``source="auto"`` (Hub first, then the bundled fallback). If ``app.py`` exposes
``build_demo()``, building the demo is timed too. Prints figures only.

    .venv/bin/python benchmarks/startup_offline.py [--checkpoints DIR] [--synthetic]

``--synthetic`` fills a temporary folder with untrained checkpoints of every ``tiny-*`` model (for a figure while
``checkpoints/`` is still empty).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, time
t0 = time.perf_counter()
import kaldn.hub as hub
t1 = time.perf_counter()
names = hub.available_models()
times = []
for name in names:
    s = time.perf_counter()
    hub.load_model(name)
    times.append(time.perf_counter() - s)
t2 = time.perf_counter()
out = {"import_s": t1 - t0, "models": len(names), "load_all_s": t2 - t1,
       "load_first_s": times[0] if times else 0.0, "load_max_s": max(times, default=0.0)}
try:
    import app
except ImportError:
    app = None
if app is not None and callable(getattr(app, "build_demo", None)):
    s = time.perf_counter()
    app.build_demo()
    out["build_demo_s"] = time.perf_counter() - s
out["total_s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


def _synthetic(folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from kaldn.checkpoint import save_checkpoint
    from kaldn.models import create_model, model_names

    for name in model_names(("tiny",)):
        save_checkpoint(folder / name, create_model(name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default=None, help="bundled folder (default: checkpoints/)")
    parser.add_argument("--synthetic", action="store_true", help="time untrained tiny-* checkpoints instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kaldn-startup-") as tmp:
        env = {k: v for k, v in os.environ.items()
               if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                            "HF_TOKEN", "HF_HUB_ETAG_TIMEOUT", "KALDN_HUB_TIMEOUT", "KALDN_HUB_RETRY_AFTER")}
        env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(Path(tmp) / "hf_home"),
                   HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
        if args.synthetic:
            _synthetic(Path(tmp) / "checkpoints")
            env["KALDN_CHECKPOINTS"] = str(Path(tmp) / "checkpoints")
        elif args.checkpoints:
            env["KALDN_CHECKPOINTS"] = str(Path(args.checkpoints).resolve())
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"failed rc={proc.returncode}")
        print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "")
        return 1
    result = json.loads(lines[-1][len("RESULT "):])
    for key, value in result.items():
        print(f"{key:14s} {value}" if isinstance(value, int) else f"{key:14s} {value:.3f}")
    print(f"{'process_wall_s':14s} {wall:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
