"""What `run` tells as it goes and at its ends (harness.engine.progress, harness.engine.explain): the time
left comes from the pace the run measured and adds up with the work planned; rounds are
counted as done of planned with re-measuring rounds apart; a workload cut short counts as
done; the NOISY rule is said once; the machine's verdict names the signal that gave it; the
peak GEMM is one figure with one name, made of the parts it names."""
from __future__ import annotations

import pytest

from harness.engine import explain
from harness.engine import stats
from harness.engine.progress import RoundLines, RunProgress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_time_left_is_the_work_left_at_the_measured_pace():
    clock, lines = Clock(), []
    # two workloads: 3 participants (2 backends + the probe) and 5; 2 process sets of 10 rounds
    prog = RunProgress([("w/a", 3), ("w/b", 5)], 2, 10, lines.append, bar=False, started=90.0,
                       clock=clock, every_s=1e9)
    assert prog.total == 2 * 10 * 3 + 2 * 10 * 5 == 160
    prog.start(0)
    assert lines[-1].startswith("[1/2] w/a") and "elapsed 10 s" in lines[-1]
    assert "time left: known once rounds have been measured" in lines[-1]
    for p in range(2):
        for _ in range(10):
            clock.t += 0.5
            prog.round(p, 3, False)
    assert prog.done_units == 60 and prog.left_s() == pytest.approx(10.0 / 60 * 100)
    for _ in range(4):  # re-measuring: time passes, the planned work does not grow
        clock.t += 0.5
        prog.round(1, 3, True)
    assert prog.done_units == 60 and prog.left_s() == pytest.approx(12.0 / 60 * 100)
    prog.finish()
    prog.start(1)
    assert lines[-1] == (f"[2/2] {'w/b':44} elapsed 22 s; about 20 s left at the pace so far "
                         "(38% of the planned rounds done)")
    for _ in range(3):  # a time budget cuts the second workload short: it counts as done
        clock.t += 1.0
        prog.round(0, 5, False)
    prog.finish()
    assert prog.done_units == prog.total and prog.left_s() == 0.0


def test_a_backend_lost_mid_workload_cannot_push_the_count_past_the_plan():
    clock = Clock()
    prog = RunProgress([("w", 3), ("v", 3)], 1, 4, lambda s: None, bar=False, clock=clock)
    prog.start(0)
    for _ in range(10):  # more participant-rounds than planned (say, re-counted): capped
        clock.t += 1
        prog.round(0, 3, False)
    assert prog.done_units == 12
    prog.finish()
    assert prog.done_units == 12


def test_round_lines_count_done_of_planned_and_remeasuring_apart():
    clock, lines = Clock(), []
    rl = RoundLines(lines.append, 2, 20, clock, every_s=30)
    for i in range(32):  # process set 2: its 20 planned rounds, then 12 re-measuring, 2 s each
        clock.t += 2.0
        rl(1, 4, i >= 20)
    assert lines == ["      process set 2 of 2: 16 of 20 planned rounds done (30 s in this set)",
                     "      process set 2 of 2: 20 of 20 planned rounds done, then 11 re-measuring "
                     "(60 s in this set)"]
    assert rl.done == 20 and rl.extra == 12
    rl(0, 4, False)  # another process set starts the count again
    assert rl.done == 1 and rl.extra == 0


def test_a_rule_is_said_once():
    lines = []
    prog = RunProgress([("w", 2)], 1, 2, lines.append, bar=False)
    prog.once("noisy", "rule")
    prog.once("noisy", "rule")
    assert lines == ["rule"]


def test_bar_on_a_terminal_shows_the_same_figures(capsys):
    clock = Clock()
    prog = RunProgress([("w", 2), ("v", 2)], 1, 5, print, bar=True, clock=clock)
    assert prog.bar is not None and prog.bar.total == 20
    prog.start(0)
    for _ in range(5):
        clock.t += 1
        prog.round(0, 2, False)
    assert prog.bar.n == 10 and "1 of 1: 5 of 5 planned rounds done" in prog.bar.desc
    assert "about 5 s left" in prog.bar.desc
    prog.log("a line of the run")
    prog.close()
    out = capsys.readouterr()
    assert "a line of the run" in out.out and "[1/2] w" in out.out and "%|" in out.err


def test_noisy_rule_states_the_thresholds_in_force():
    text = explain.noisy_rule(7)
    assert text.startswith("NOISY: fewer than 7 of the cell's rounds were clean")
    assert f"within {stats.CLEAN_FACTOR:g}x the fastest probe round" in text
    assert f"over {stats.COLLAPSE_FACTOR:g}x the cell's median" in text
    assert explain.noisy_rule().startswith(f"NOISY: fewer than {stats.MIN_CLEAN} ")


@pytest.mark.parametrize("noise,start", [
    # the neighbour count made it CONTENDED while the probe saw 4% of rounds contended
    ({"verdict": "contended", "contended_fraction": 0.04, "collapse_rounds": 0, "foreign_cores_max": 1.02,
      "probe_verdict": "quiet"},
     "CONTENDED by the neighbour count: other processes kept up to 1.02 cores busy"),
    ({"verdict": "noisy", "contended_fraction": 0.13, "collapse_rounds": 0, "foreign_cores_max": 0.03,
      "probe_verdict": "noisy"},
     "NOISY by the noise probe: 13% of the probe's rounds ran over 1.5x its best, 0 collapse rounds"),
    ({"verdict": "contended", "contended_fraction": 0.66, "collapse_rounds": 2, "foreign_cores_max": 1.6,
      "probe_verdict": "contended"},
     "CONTENDED by the noise probe and the neighbour count alike: 66%"),
    # a file from before probe_verdict was recorded: read from the contended share
    ({"verdict": "contended", "contended_fraction": 0.04, "collapse_rounds": 0, "foreign_cores_max": 0.7},
     "CONTENDED by the neighbour count"),
    ({"verdict": "quiet", "contended_fraction": 0.02, "collapse_rounds": 0, "foreign_cores_max": None},
     "QUIET by the noise probe: 2% of the probe's rounds"),
])
def test_verdict_names_its_signal(noise, start):
    text = explain.verdict_words(noise)
    assert text.startswith(start), text
    if "by the neighbour count:" in start:
        assert "the probe alone said QUIET (4% of the probe's rounds" in text


def test_peak_words_name_the_parts_of_the_one_figure():
    pk = {"gflops": 170.5, "via": "numpy openblas", "dtype": "float32", "probe_gflops": 170.5, "probe_n": 256,
          "gemm_gflops": 76.7, "gemm_n": 1024, "threads": 2}
    assert explain.peak_words(pk) == ("peak GEMM 170.5 GFLOP/s float32, the fastest of the 256x256 noise "
                                      "probe's best 170.5 and the 1024x1024 GEMM's best 76.7 (2 threads, "
                                      "as the backends), via numpy openblas")
    assert explain.peak_of("cpu", 166.3, 76.7) == 166.3 and explain.peak_of("cpu", None, 80.0) == 80.0
    assert explain.peak_of("gpu", 166.3, 9000.0) == 9000.0  # the probe runs on the CPU
    line = explain.start_words("machine at start", {"gflops": 166.3, "cv": 0.03, "rounds": 15}, 76.7,
                               "openblas", 256, 1024)
    assert line == ("machine at start: probe GEMM (256x256) 166.3 GFLOP/s best, cv 3% over 15 rounds; "
                    "1024x1024 GEMM 76.7 GFLOP/s; peak GEMM so far 166.3 GFLOP/s (the faster; efficiencies "
                    "are divided by the run's fastest) (openblas)")
    assert explain.peak_words({"gflops": 142.1, "via": "numpy", "dtype": "float32"}) == \
        "peak GEMM 142.1 GFLOP/s float32 (via numpy)"  # an older file: what it recorded
