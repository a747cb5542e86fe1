"""The demo: generated raw sources (planted archetypes or a realistic customer base) and
a Spark standalone cluster on this machine, for `make demo` and `make cluster-demo`."""
