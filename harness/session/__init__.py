"""A run's life, whatever runs: the session (one results file's document, name, journal, resume,
interruption and final write), the journal, a benchmark run's settings, and the run kinds
(benchmark matrix, quality matrix, baselines) that `run --resume` continues."""
