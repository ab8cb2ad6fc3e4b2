"""Shared fixtures: which backends this environment must test (LSTMBENCH_BACKENDS), whether
one can run in this process, and the cached reference outputs of every cross-check case."""
from __future__ import annotations

import os

import numpy as np
import pytest

from impls import registry
from impls.case import Case, make_case, run_case
from harness.commands.check_cases import CROSS_CASES, CrossCase


_AFFINITY = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


@pytest.fixture(autouse=True)
def _restore_cpu_affinity():
    """A backend configured in this process may pin it (impls/jax_impl.py keeps the first
    `threads` CPUs for XLA's pool): give the next test, and the processes it starts, the CPUs
    the session started with. Without this, test_quality's pinning test was skipped in CI
    ("needs two CPUs") after an in-process jax test had left the runner on one."""
    yield
    if _AFFINITY is not None and sorted(os.sched_getaffinity(0)) != _AFFINITY:
        os.sched_setaffinity(0, _AFFINITY)


def backends_under_test() -> list[str]:
    """LSTMBENCH_BACKENDS (comma list, set by each tox environment) names the backends this
    environment must test: one that is unavailable then fails. Without it, every backend
    whose framework imports here is tested, and the rest are skipped with the reason."""
    names = os.environ.get("LSTMBENCH_BACKENDS")
    if names:
        return [n.strip() for n in names.split(",") if n.strip()]
    return [n for n in registry.BACKENDS if n != "numpy"]


def require_backend(name: str, mode: str | None = None) -> None:
    """Skip (or, where LSTMBENCH_BACKENDS names it, fail) unless backend `name` can be created
    in this process: its framework imports, its spec's env_vars match this process's
    environment (otherwise tests/test_conformance.py::test_in_own_process runs the suite for
    it in a child process), and its spec has `mode` when one is given."""
    why = registry.env_mismatch(name)
    if why:
        pytest.skip(f"{why.split(';')[0]}: tests/test_conformance.py::test_in_own_process runs it")
    ok, why = registry.availability(name)
    if not ok:
        if os.environ.get("LSTMBENCH_BACKENDS"):
            pytest.fail(f"backend {name} is required in this environment but unavailable: {why}")
        pytest.skip(f"backend {name} unavailable in this environment: {why}")
    if mode is not None:
        why = registry.unsupported(name, mode=mode)
        if why:
            pytest.skip(why)


def random_window(model, B: int = 3, T: int = 7, seed: int = 0):
    """Random tokens, targets (B, T) and a non-zero state (L, B, H) for backend-specific tests."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, model.vocab_size, size=(B, T))
    tgt = rng.integers(0, model.vocab_size, size=(B, T))
    h = rng.uniform(-0.5, 0.5, (model.num_layers, B, model.hidden_size))
    c = rng.uniform(-0.5, 0.5, (model.num_layers, B, model.hidden_size))
    return tok, tgt, h, c


_reference: dict[str, tuple[Case, dict[str, np.ndarray]]] = {}


def reference(cc: CrossCase) -> tuple[Case, dict[str, np.ndarray]]:
    """The case and its float64 reference outputs, computed once per session."""
    if cc.id not in _reference:
        case = make_case(cc.spec, cc.seed, cc.batch, cc.seq_len, zero_state=cc.zero_state)
        be = registry.create("numpy", case.spec.model, case.spec.train, case.params)
        _reference[cc.id] = (case, run_case(case, be))
    return _reference[cc.id]


@pytest.fixture(params=CROSS_CASES, ids=lambda c: c.id)
def cross_case(request: pytest.FixtureRequest) -> CrossCase:
    return request.param


_PORT: dict = {}  # the one porting session (below)


@pytest.fixture(scope="session")
def port_session():
    """One porting session (a worker per environment: main, chainer) for the porting tests
    (tests/test_porting*.py): each environment's frameworks are imported once, and reads and
    runs of a file are cached across tests (harness.engine.porting). Its workers are closed
    after the last of those tests (they would start again if asked), so that they do not sit
    beside the rest of the suite."""
    from harness.engine.porting import PortSession
    _PORT["session"] = s = PortSession()
    yield s
    s.close()


def pytest_runtest_teardown(item, nextitem):
    if "session" in _PORT and (nextitem is None or not nextitem.path.name.startswith("test_porting")):
        _PORT["session"].close()
