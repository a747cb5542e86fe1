"""spark-submit entry point: write the latest saved model as an mlflow model that scores in plain numpy.

    spark-submit --py-files dist/custseg.zip jobs/export_scorer.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-scorer", *sys.argv[1:]]))
