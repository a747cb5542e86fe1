"""spark-submit entry point: profile and name the segments of the current labels. (Not
``profile.py``: a script's folder comes first on sys.path, and that name would shadow the
standard library's ``profile``, which pyspark imports.)

    spark-submit --py-files dist/custseg.zip jobs/profiles.py --config conf/base.yaml --config conf/cluster.yaml

All logic lives in the custseg package; this file only hands over the flags.
"""

import sys

from custseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["profile", *sys.argv[1:]]))
