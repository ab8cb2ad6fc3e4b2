"""The measurement: participants (one module per kind in kinds/) and the worker processes behind
them, the interleaved scheduler, the statistics, the executor seam and this machine's executor,
the workload record and results document, and the lanes that check and quality runs share.
Imports nothing: the worker side of this package (worker.py, bench.py, failures.py,
participants.py, kinds/) also runs in other interpreters (chainer's NumPy < 2 environment) and
must not pull the harness's side in."""
