# Two commands do everything on a fresh machine:
#   make demo   set up, generate the demo data, run the whole pipeline, print the segments
#   make test   set up and run the test suite
# Setup (a virtualenv with pinned packages, and the Delta jars in .cache/jars) runs
# once; after that everything works offline.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JARS   := .cache/jars/.complete

.PHONY: setup jars demo test lint package clean

setup: $(STAMP) $(JARS)

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

demo: setup
	$(VENV)/bin/custseg demo

test: setup
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check lib jobs tests notebooks deps setup.py

# What spark-submit --py-files needs: the package as a zip (dist/custseg.zip).
package: $(STAMP)
	rm -rf dist && mkdir -p dist
	cd lib && $(abspath $(PY)) -m zipfile -c ../dist/custseg.zip custseg
	@echo "dist/custseg.zip: spark-submit --py-files dist/custseg.zip jobs/run.py --config conf/base.yaml --config conf/cluster.yaml"

clean:
	rm -rf data models dist spark-warehouse .pytest_cache
