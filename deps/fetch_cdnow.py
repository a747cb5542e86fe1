"""Fetch the CDNOW data sets the customer-value tests check the published fits on.

Run once by ``make cdnow`` (part of ``make setup``). The data ship inside the
``lifetimes`` wheel on PyPI; pip downloads that wheel (without installing it or its
dependencies: the package is unmaintained and would fight the pins) into
``.cache/wheels``, and only the data files are extracted into ``.cache/cdnow``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
WHEELS = CACHE / "wheels"
TARGET = CACHE / "cdnow"
REQUIREMENT = "lifetimes==0.11.3"
FILES = (
    "CDNOW_master.txt",
    "CDNOW_sample.txt",
    "cdnow_customers_summary.csv",
    "cdnow_customers_summary_with_transactions.csv",
)


def main() -> int:
    WHEELS.mkdir(parents=True, exist_ok=True)
    download = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                "--only-binary", ":all:", "-d", str(WHEELS), REQUIREMENT]  # fmt: skip
    if subprocess.run(download, check=False).returncode != 0:
        print(f"could not download {REQUIREMENT} from PyPI (needed once, for the CDNOW test data)", file=sys.stderr)
        return 1
    wheel = next(p for p in WHEELS.iterdir() if p.name.lower().startswith("lifetimes-0.11.3-"))
    staging = CACHE / "cdnow.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        for name in FILES:
            (staging / name).write_bytes(archive.read(f"lifetimes/datasets/{name}"))
    shutil.rmtree(TARGET, ignore_errors=True)
    staging.rename(TARGET)
    print(f"CDNOW data in {TARGET}: {', '.join(FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
