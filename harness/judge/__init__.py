"""Judgements: is one thing faster than another, or the same, and how sure. One estimator (the
run's own, harness.engine.stats.estimate), one table of quantiles (tdist), one rule from a ratio
and its intervals to a mark (marks), shared by the two ways of comparing:

- crossrun: a cell of one run against the same cell of another (`compare OLD NEW`), with its
  interval from a hierarchical bootstrap over runs, processes and rounds (significance) and the
  machine's own moves taken out;
- duet: two participants of one run from their paired rounds (`compare --variants`, `ab`, a
  backend against its hand-written baseline in `baselines`).
"""
