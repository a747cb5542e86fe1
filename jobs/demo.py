"""spark-submit entry point: generate the demo data and run the whole pipeline on it.

    spark-submit --py-files dist/custseg.zip jobs/demo.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
