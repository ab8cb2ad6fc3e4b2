"""Results files of `lstmbench run`: the schema with its versions and migrations (schema.py),
where and how they are written (store.py), the one model of a run that compare, report,
`compare --variants` and the DataFrame read (model.py), and the DataFrame (dataframe.py).

For users, the names a notebook needs:

    from harness.results import load_dataframe, read_run
"""
from .dataframe import load_dataframe
from .model import Run, RunCell, read_run, read_runs
from .schema import RESULTS_FIELDS, SCHEMA, SCHEMA_VERSION, ResultsError, load_results

__all__ = ["load_dataframe", "load_results", "read_run", "read_runs", "Run", "RunCell", "ResultsError",
           "RESULTS_FIELDS", "SCHEMA", "SCHEMA_VERSION"]
