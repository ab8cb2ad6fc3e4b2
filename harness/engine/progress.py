"""How far `lstmbench run` is, told as it goes.

The work of a run is counted in participant-rounds: a workload plans `processes x rounds`
rounds, each timing every backend that can run there and the noise probe once. The time left
is the work left at the pace the run has measured so far (seconds since its first workload
over the participant-rounds done), so it comes from this run on this machine and nothing
else; a workload whose rounds are slower (larger sizes) or that re-measures raises it, and
the line says where the figure comes from. Rounds a workload re-measures are beyond its plan
and counted apart; a workload cut short by its time budget counts as done.

On a terminal (stderr a TTY, output to the default print) a tqdm bar at the bottom shows the
same figures while the run's lines scroll above it; in a log, CI or a test, plain lines: one
per workload, and one at most every PROGRESS_EVERY_S seconds while a workload's rounds last."""
from __future__ import annotations

import builtins
import sys
import time
from typing import Any, Callable

PROGRESS_EVERY_S = 30.0  # a plain line about the rounds at most this often


def fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


class RoundLines:
    """The rounds of one workload as plain lines (measure_workload's default reporter, also
    the one `baselines` and the experiments get): which process set, rounds done of planned,
    re-measuring rounds apart; `tail` adds words (the run's time left)."""

    def __init__(self, log: Callable[[str], None], processes: int, rounds: int,
                 clock: Callable[[], float] = time.monotonic, every_s: float = PROGRESS_EVERY_S,
                 tail: Callable[[], str] | None = None) -> None:
        self.log, self.processes, self.rounds, self.clock, self.every_s = log, processes, rounds, clock, every_s
        self.tail = tail
        self.p: int | None = None
        self.done = self.extra = 0
        self.t_set = self.t_said = 0.0

    def count(self, p: int, remeasuring: bool) -> None:
        """One round of process set p (0-based) finished; `remeasuring`: a round added
        because cells lacked clean rounds."""
        if p != self.p:
            now = self.clock()
            self.p, self.done, self.extra, self.t_set, self.t_said = p, 0, 0, now, now
        if remeasuring:
            self.extra += 1
        else:
            self.done += 1

    def __call__(self, p: int, participants: int, remeasuring: bool) -> None:
        """measure_workload's per-round report: a line when every_s have passed since the last."""
        self.count(p, remeasuring)
        now = self.clock()
        if now - self.t_said >= self.every_s:
            self.t_said = now
            self.log("      " + self.words(now) + (f"; {self.tail()}" if self.tail else ""))

    def words(self, now: float) -> str:
        out = (f"process set {(self.p or 0) + 1} of {self.processes}: "
               f"{self.done} of {self.rounds} planned rounds done")
        if self.extra:
            out += f", then {self.extra} re-measuring"
        return out + f" ({fmt_s(now - self.t_set)} in this set)"


class RunProgress:
    """The run's progress over its workloads: plan them, then call start(i), the per-round
    reporter round (passed to measure_workload) and finish() for each; close() at the end."""

    def __init__(self, plan: list[tuple[str, int]], processes: int, rounds: int,
                 log: Callable[[str], None], *, bar: bool | None = None, started: float | None = None,
                 clock: Callable[[], float] = time.monotonic, every_s: float = PROGRESS_EVERY_S) -> None:
        """plan: per workload to measure, (its id, participants per round: the backends that can
        run there and the probe). bar: a tqdm bar (None: where stderr is a terminal and `log`
        is the default print). started: when the run began (clock()), for the elapsed time;
        the pace is taken from the first workload on, without the run's start-up."""
        self.plan, self.processes, self.rounds, self.clock = plan, processes, rounds, clock
        self.started = started
        self.units = [processes * rounds * n for _, n in plan]  # planned participant-rounds
        self.total = sum(self.units)
        self.done_units = 0  # of finished workloads (as planned) and of the current one
        self.base = 0  # done_units when the current workload started
        self.t0: float | None = None  # when the first workload started
        self.i = 0
        self.said: set[str] = set()
        self.lines = RoundLines(self.log, processes, rounds, clock, every_s, tail=self.eta_words)
        self._log = log
        self.bar = self._make_bar() if (bar if bar is not None else _terminal(log)) else None

    def _make_bar(self) -> Any:
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.total, file=sys.stderr, dynamic_ncols=True, leave=False, smoothing=0,
                    bar_format="{percentage:3.0f}%|{bar:24}| {desc}")

    def log(self, text: str) -> None:
        """A line of the run's output, above the bar when there is one."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            self._log(text)

    def left_s(self) -> float | None:
        """Seconds left at the pace measured so far; None before any round was done."""
        if self.t0 is None or self.done_units <= 0:
            return None
        spent = self.clock() - self.t0
        return spent / self.done_units * (self.total - self.done_units)

    def eta_words(self) -> str:
        left = self.left_s()
        if left is None:
            return "time left: known once rounds have been measured"
        done = 100 * self.done_units / self.total if self.total else 100
        return f"about {fmt_s(left)} left at the pace so far ({done:.0f}% of the planned rounds done)"

    def start(self, i: int) -> None:
        """Workload i (0-based in the plan) begins."""
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        self.i, self.base = i, self.done_units
        wid = self.plan[i][0]
        since = self.started if self.started is not None else self.t0
        self.log(f"[{i + 1}/{len(self.plan)}] {wid:44} elapsed {fmt_s(now - since)}; " + self.eta_words())
        self._show(f"[{i + 1}/{len(self.plan)}] {wid}")

    def round(self, p: int, participants: int, remeasuring: bool) -> None:
        """measure_workload's per-round reporter."""
        if not remeasuring:  # re-measuring rounds are beyond the plan: time passes, work does not
            self.done_units = min(self.base + self.units[self.i], self.done_units + participants)
        if self.bar is None:
            self.lines(p, participants, remeasuring)
            return
        self.lines.count(p, remeasuring)
        self._show(f"[{self.i + 1}/{len(self.plan)}] {self.plan[self.i][0]}: " + self.lines.words(self.clock()))

    def finish(self) -> None:
        """The current workload is done: its planned rounds count as done (a budget may have
        cut them short, a backend may have failed)."""
        self.done_units = self.base + self.units[self.i]
        self.lines.p = None
        self._show(f"[{self.i + 1}/{len(self.plan)}] {self.plan[self.i][0]}: done")

    def _show(self, desc: str) -> None:
        if self.bar is None:
            return
        left = self.left_s()
        self.bar.set_description_str(desc + (f"; about {fmt_s(left)} left" if left is not None else ""),
                                     refresh=False)
        self.bar.n = self.done_units
        self.bar.refresh()

    def once(self, key: str, text: str) -> None:
        """Log `text` the first time `key` comes up in this run (a rule, where it first applies)."""
        if key not in self.said:
            self.said.add(key)
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _terminal(log: Callable[[str], None]) -> bool:
    """A bar only for a person watching: stderr is a terminal and the run prints its lines
    (a caller's own log function is a log, a test or a parent process)."""
    try:
        return log is builtins.print and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
