"""spark-submit entry point: label customers with the latest saved model (no refit) and merge the label history.

    spark-submit --py-files dist/custseg.zip jobs/score.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
