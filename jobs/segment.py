"""spark-submit entry point: fit the model (choosing k), label every customer, merge the label history, check stability.

    spark-submit --py-files dist/custseg.zip jobs/segment.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]]))
