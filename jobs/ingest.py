"""spark-submit entry point: consolidate the raw sources into the canonical transactions Delta table.

    spark-submit --py-files dist/custseg.zip jobs/ingest.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
