"""Entry point, as in every MONAI Deploy app: ``python app -i INPUT -o OUTPUT -m MODELS``.

Without arguments the paths come from ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and
``HOLOSCAN_MODEL_PATH`` (the SDK's AppContext). Works from the project root (``python app``,
``python -m app``) and inside a MAP, where the packager runs ``python3 /opt/holoscan/app`` on the
staged application folder that holds ``app/``, ``operators/`` and ``lnmet/`` side by side.
"""

import os
import sys
import time

_STARTED = time.perf_counter()  # the summary's total includes the imports (Holoscan, torch: seconds)

# PyTorch's OpenMP threads wait for work by spinning (OMP_WAIT_POLICY ACTIVE) by default. On a CPU
# shared with other jobs the spinning threads take time from the ones doing work: the organ model's
# inference on the 20-slice real sample took 3.4x longer than with PASSIVE on a loaded 2-core machine
# and 4.7x beside two more busy processes (benchmarks/bench_cpu_contention.py; the 6-14 minutes of
# issue 15 for a series that takes ~40 s on an idle machine). PASSIVE waits sleep instead; on an
# idle machine the speed is the same. Set before torch is imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

_HERE = Path(__file__).resolve().parent
# Project layout: <root>/app/__main__.py; staged layout: <stage>/__main__.py beside lnmet/ and app/.
_ROOT = _HERE if (_HERE / "lnmet").is_dir() else _HERE.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from app.application import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started=_STARTED))
