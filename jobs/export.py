"""spark-submit entry point: send the changed segments to the CRM (a PostgreSQL table, or files).

    spark-submit --py-files dist/custseg.zip --packages org.postgresql:postgresql:42.7.14 \
      jobs/export.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
