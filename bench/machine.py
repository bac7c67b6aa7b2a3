"""What machine a benchmark ran on: CPU model and the instruction sets that change speed.

Machines of this project vary from session to session (AVX2 only, or AVX-512 with
VNNI, BF16 and AMX), so every benchmark's JSON records this, and figures are only
compared within one run on one CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features import devices


def cpu_info(*, device: bool = True) -> dict:
    """``{"model", "cpus", "cores_available", "flags": {flag: bool}, "python", "platform",
    "device"}`` of this machine

    ``device`` is what computes Keras networks here, ``"GPU:0 <name>, <backend>"`` or
    ``"CPU: <model>, N cores, <ISA>, <backend>"`` (:func:`features.devices.describe_device`;
    it imports the backend); ``device=False`` leaves it out, for benches of decoding only.
    """
    info = devices.cpu_info()
    if device:
        info["device"] = devices.describe_device()
    return info


def describe(info: dict | None = None) -> str:
    """One line: model, CPU count and the flags present."""
    info = info or cpu_info()
    present = [f for f, on in info["flags"].items() if on]
    return f"{info['model']}, {info['cpus']} CPUs, {' '.join(present) or 'no AVX2'}"


# Run a tlearn command in a child process and print the child's own peak RSS (VmHWM):
# ru_maxrss would be wrong here, since Linux carries it across exec from the (large)
# benchmark process that forked.
_PEAK_CHILD = """
import sys
from pipeline.cli import main
sys.argv = ["tlearn", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK_KB", line.split()[1])
"""


def tlearn_peak_rss_mb(args: list[str], cwd: Path) -> float:
    """Peak resident memory, in MB, of one ``tlearn ARGS...`` process."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_CHILD, *args], cwd=cwd,
                          capture_output=True, text=True)
    peak = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_KB")]
    if proc.returncode != 0 or not peak:
        raise RuntimeError(f"tlearn {args[0]} failed: {proc.stderr[-2000:]}")
    return int(peak[0]) / 1024
