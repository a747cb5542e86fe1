# Two commands do everything on a fresh machine:
#   make demo   set up, generate the demo data, run the whole pipeline, print the segments
#   make test   set up and run the test suite
# Setup (a virtualenv with pinned packages, the Delta jars in .cache/jars and the CDNOW
# test data in .cache/cdnow) runs once; after that everything works offline.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JARS   := .cache/jars/.complete
CDNOW  := .cache/cdnow/.complete
CLUSTER := data/cluster

.PHONY: setup jars cdnow browser postgres demo test lint package cluster-demo clean

setup: $(STAMP) $(JARS) $(CDNOW)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# The Delta Lake jars matching the pinned delta-spark, fetched once from Maven Central.
jars: $(JARS)

$(JARS): $(STAMP) deps/pom.xml deps/fetch_jars.py
	$(PY) deps/fetch_jars.py
	touch $@

# The CDNOW data the customer-value tests check the published BG/NBD and Gamma-Gamma fits
# on: the files inside the lifetimes wheel on PyPI, downloaded once, not installed.
cdnow: $(CDNOW)

$(CDNOW): $(STAMP) deps/fetch_cdnow.py
	$(PY) deps/fetch_cdnow.py
	touch $@

demo: setup
	$(VENV)/bin/custseg demo

# Two workers (pytest-xdist), each test file on one of them. What several files share (the
# demo lake, the benchmark harness run) is built once per run by the first worker that
# asks (tests/conftest.py: build_once). Not --dist loadgroup: with pytest 9.2, xdist 3.8
# ignores the groups. Here loadfile took 18:50, load 21:07. PYTEST_ARGS= runs in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: setup browser postgres
	$(PY) -m pytest $(PYTEST_ARGS)

# Chromium for the test that opens the report in a real browser: Debian's package, installed
# once where apt-get runs as root (CI); elsewhere a note, and that one test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the report's browser test" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "note: no Chromium, so the report's browser test will be skipped (install chromium, or set CUSTSEG_CHROMIUM)"; \
	fi

# PostgreSQL for the CRM export's tests, which start a server of their own in a temporary
# folder: Debian's package, installed once where apt-get runs as root (CI); elsewhere a
# note, and those tests are skipped (in CI they fail).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's postgresql for the CRM export's tests" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	  echo "note: no PostgreSQL server, so the CRM export's tests will be skipped (install postgresql)"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check lib jobs tests notebooks deps benchmarks setup.py

# What spark-submit --py-files needs: the package as a zip (dist/custseg.zip).
package: $(STAMP)
	rm -rf dist && mkdir -p dist
	cd lib && $(abspath $(PY)) -m zipfile -c ../dist/custseg.zip custseg
	@echo "dist/custseg.zip: spark-submit --py-files dist/custseg.zip jobs/run.py --config conf/base.yaml --config conf/cluster.yaml"

# The demo on a real Spark standalone cluster on this machine: a master and two workers
# (1 core, 1g each) on 127.0.0.1 and free ports, started by custseg.demo.standalone, which
# stops them however the job ends. spark-submit runs jobs/demo.py (generate the demo
# sources on the cluster, then the whole pipeline) as in production: the package zip,
# the Delta jars, conf/cluster.yaml.
cluster-demo: setup package
	PATH=$(abspath $(VENV))/bin:$$PATH PYSPARK_PYTHON=$(abspath $(PY)) \
	$(PY) -m custseg.demo.standalone run --work-dir $(CLUSTER)/spark --workers 2 --cores 1 --memory 1g -- \
	  spark-submit --master {master} --py-files dist/custseg.zip --jars "$$(ls .cache/jars/*.jar | paste -sd, -)" \
	  jobs/demo.py --config conf/base.yaml --config conf/cluster.yaml \
	  --set storage.root=$(CLUSTER)/lake --set segment.model_dir=$(CLUSTER)/models \
	  --set spark.log_level=WARN --set spark.shuffle_partitions=4 \
	  --set spark.conf.spark.databricks.delta.snapshotPartitions=4
	@echo "Segment labels: $(CLUSTER)/lake/segment_labels (Delta; all tables in $(CLUSTER)/lake)," \
	  "cluster logs: $(CLUSTER)/spark/logs"

clean:
	rm -rf data models dist spark-warehouse .pytest_cache

# The benchmark of issue 6: N generated transactions through our pipeline, pandas +
# scikit-learn and DuckDB, each in its own measured process. Tables, plot and the summary
# across sizes go to benchmarks/results/; generated data stays in data/bench/<N>/.
#   make bench N=10000000
N ?= 1000000
.PHONY: bench
bench: setup
	$(PY) -m benchmarks.run --transactions $(N)
