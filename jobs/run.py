"""spark-submit entry point: the whole pipeline: ingest, features, segment.

    spark-submit --py-files dist/custseg.zip jobs/run.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
