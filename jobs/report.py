"""spark-submit entry point: the HTML report (and PNG plots) of the current labels' run.

    spark-submit --py-files dist/custseg.zip jobs/report.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
