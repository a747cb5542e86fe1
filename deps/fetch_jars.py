"""Fetch the Delta Lake jars that match the installed delta-spark and pyspark, and the
PostgreSQL JDBC driver of the CRM export (its version is pinned in deps/pom.xml).

Run once by ``make jars`` (``make setup``, ``make demo`` and ``make test`` depend on it).
Maven resolves ``io.delta:delta-spark_<spark>_<scala>:<delta>`` and everything it needs
into a project-local repository (``.cache/m2``); the jars that pyspark does not already
ship are then copied into ``.cache/jars``, which the Spark session factory puts on
``spark.jars``. After this, sessions start without network access.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pyspark

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "deps" / "pom.xml"
CACHE = ROOT / ".cache"
JARS = CACHE / "jars"

_VERSIONED_JAR = re.compile(r"^(?P<artifact>.+?)-\d[\w.\-]*\.jar$")


def _artifact(jar_name: str) -> str:
    match = _VERSIONED_JAR.match(jar_name)
    return match.group("artifact") if match else jar_name


def main() -> int:
    delta_version = version("delta-spark")
    spark_binary = ".".join(pyspark.__version__.split(".")[:2])
    staging = CACHE / "jars.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if shutil.which("mvn") is None:
        print(
            "Maven (mvn) is needed once to fetch the Delta jars: install it "
            "(Debian/Ubuntu: apt-get install maven) and run `make jars` again.",
            file=sys.stderr,
        )
        return 1
    print(
        f"Resolving io.delta:delta-spark_{spark_binary}_2.13:{delta_version} and org.postgresql:postgresql "
        "from Maven Central"
    )
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(POM),
        f"-Dmaven.repo.local={CACHE / 'm2'}",
        f"-Ddelta.version={delta_version}",
        f"-Dspark.binary={spark_binary}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    if subprocess.run(cmd, check=False).returncode != 0:
        print("Maven could not resolve the Delta jars (see above).", file=sys.stderr)
        return 1

    # Spark's own jars come first on the classpath; copies of them (older Jackson,
    # Hadoop, Parquet, Scala) would only add ambiguity, so keep what pyspark lacks.
    shipped = {_artifact(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    kept = [p for p in sorted(staging.glob("*.jar")) if _artifact(p.name) not in shipped]
    for jar in set(staging.glob("*.jar")) - set(kept):
        jar.unlink()
    shutil.rmtree(JARS, ignore_errors=True)
    staging.rename(JARS)
    print(f"{len(kept)} jars in {JARS.relative_to(ROOT)}:")
    for jar in kept:
        print(f"  {jar.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
