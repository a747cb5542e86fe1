"""spark-submit entry point: compute customer features (RFM) as of a date.

    spark-submit --py-files dist/custseg.zip jobs/features.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
