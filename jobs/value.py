"""spark-submit entry point: fit the customer-value models and write each customer's CLV.

    spark-submit --py-files dist/custseg.zip jobs/value.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["value", *sys.argv[1:]]))
