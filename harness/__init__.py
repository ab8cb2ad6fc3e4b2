"""lstmbench's harness: the command line, worker processes, benchmark matrices, results,
cross-checks, comparisons and reports."""
