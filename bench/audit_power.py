"""Power of the per-cell audit: detection and false-alarm rates against reference seeds and forget-set size.

    python bench/audit_power.py [--reps 40] [--shifts 0.5 1.0]

A planted-shift simulation (see scunlearn.audit.power): members of the audited baseline
score ``shift`` per-cell seed-SDs above the retrained models. Prints one row per shift ×
number of retrained models (train seeds + audit.reference_seeds) × forget-set size, so a
user can size a study before paying for it.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import scunlearn  # noqa: F401
except ImportError:  # not pip-installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

from scunlearn.audit.power import power_table  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--shifts", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--refs", type=int, nargs="+", default=[2, 4, 8, 12])
    ap.add_argument("--forget", type=int, nargs="+", default=[15, 30, 60])
    a = ap.parse_args()
    df = power_table(a.shifts, a.refs, a.forget, reps=a.reps)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
