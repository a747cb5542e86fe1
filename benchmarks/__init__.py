"""The benchmark harness of issue 6: our pipeline beside pandas + scikit-learn and DuckDB.

``make bench N=1000000`` (``python -m benchmarks.run --transactions N``) generates N raw
transactions into Parquet once (``generate``), then runs each tool in a process of its
own (``tool_custseg``, ``tool_pandas``, ``tool_duckdb``) while the parent samples the
whole process tree's memory (``measure``), and writes the results, a plot and the
summary across sizes to ``benchmarks/results/`` (``report``).

Nothing here is imported by ``lib/``: the harness only calls the library, the way a job
or a notebook does.
"""
