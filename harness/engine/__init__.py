"""The measurement engine: participants and the worker processes behind them, the interleaved
scheduler, the statistics, the journal, the executor that runs a workload, and the lanes that
check and quality runs share. Imports nothing: the worker side of this package
(worker.py, bench.py, failures.py, participants.py) also runs in other interpreters
(chainer's NumPy < 2 environment) and must not pull the harness's side in."""
