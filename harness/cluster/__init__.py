"""--cluster ADDRESS: Ray. What runs on the nodes and the driver's side of submitting it (tasks), and
the executor that measures a benchmark run's workloads there, one results file per machine kind
(executor). Ray is imported only here, and only with --cluster."""
