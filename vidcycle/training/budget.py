"""Training to a time budget (`vidcycle train --time 45m`): the schedule fitted to the clock.

A schedule cut short by the clock stops at full learning rate, at whatever point of a GAN's swing it
has reached; a schedule whose decay ends exactly at the budget beats it for the same compute
(Li, Yumer and Ramanan, "Budgeted Training", ICLR 2020). So a budgeted run times its first iterations
on this machine (after a warm-up that pays for allocation and kernel choice), then plans how many
iterations fit, in the recipe's proportions of constant and decaying learning rate, with the sample
grids, the checkpoints and the export counted in. It re-times the step every 5% of the budget and
re-plans when the rate has drifted: while the learning rate is constant by moving the end (and the
start of the decay); once the decay has begun by drawing its line again from the learning rate it has
reached to the new end, so the rate never jumps and the decay still ends at the budget on a machine that
slowed down (a laptop that warms up, other work). A resumed run keeps the plan and the time spent, and
ends where the unbroken one would have when the machine runs at the same speed.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from time import monotonic

from vidcycle.errors import TrainingError, UsageError
from vidcycle.training.schedule import Schedule

log = logging.getLogger("vidcycle")

WARMUP_ITERATIONS = 2     # untimed: the first steps allocate, pick kernels and fill caches
TIMED_ITERATIONS = 3      # timed before the first plan
REPLAN_SHARE = 0.05       # re-time every 5% of the budget ...
DRIFT = 0.03              # ... and adopt a plan that moves the end by more than 3%
FIRST_GUESS = 3.0         # a checkpoint or export not yet measured: this many steps' time

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def now() -> float:
    """The clock budgets run on (one place, so a test can stub it)."""
    return monotonic()


def parse_duration(text: str) -> float:
    """Seconds in '45m', '2h', '1h30m', '90s', '1.5h'. Raises UsageError for anything else."""
    cleaned = str(text).strip().lower().replace(" ", "")
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)([smhd]))+", cleaned)
    if not cleaned or parts is None:
        raise UsageError(f"--time {text!r}: give a duration with a unit, e.g. 45m, 2h, 1h30m or 90s")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in re.findall(r"(\d+(?:\.\d+)?)([smhd])", cleaned))
    if seconds <= 0:
        raise UsageError(f"--time {text!r}: the budget must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """'45 min', '2 h 5 min', '40 s'."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


@dataclass(frozen=True)
class Plan:
    """The run's length: `total` iterations, the first `constant` at full learning rate. A plan made in the
    decay starts its line again at iteration `knot` from `knot_factor` (vidcycle.training.schedule)."""

    total: int
    constant: int
    bound: str          # what ends the run: "time" or "max-steps"
    knot: int = 0
    knot_factor: float = 1.0

    @property
    def decay(self) -> int:
        return self.total - self.constant


class TimeBudget:
    """A run's clock: what it has spent, what a step and each overhead cost, and the plan."""

    def __init__(self, seconds: float, constant_share: float, max_steps: int | None = None, spent: float = 0.0,
                 plan: Plan | None = None, decaying: bool = False, started: float | None = None, clock=None,
                 every: tuple[int, int] = (500, 1000)):
        self.clock = clock or monotonic
        self.every = every          # the recipe's (sample_every, checkpoint_every)
        self.seconds, self.constant_share, self.max_steps = seconds, constant_share, max_steps
        self.spent_before = spent
        self.started = self.clock() if started is None else started
        self.plan, self.decaying = plan, decaying
        self.costs: dict[str, float] = {}       # kind -> seconds of its last occurrence (sample, checkpoint, export)
        self.counts: dict[str, int] = {}
        self.step_seconds, self.steps_timed, self.untimed = 0.0, 0, WARMUP_ITERATIONS
        self.recent: list[float] = []          # step times since the last check: the rate now
        self.mark, self.overhead_since_mark = None, 0.0
        self.next_check = 0.0
        self.announced = plan.total if plan else 0

    # ------------------------------------------------------------ the clock
    def spent(self) -> float:
        """Seconds of the budget used: before this process (from the checkpoint) and since it started."""
        return self.spent_before + self.clock() - self.started

    def overhead(self, kind: str):
        """Times a sample grid, checkpoint or export, so it is counted apart from the step."""
        return _Overhead(self, kind)

    def begin_loop(self) -> None:
        self.mark, self.overhead_since_mark = self.clock(), 0.0

    def iteration_done(self, iteration: int) -> Plan | None:
        """After each iteration: time it; plan or re-plan when due. Returns the plan when it changed."""
        now = self.clock()
        took = now - self.mark - self.overhead_since_mark
        self.mark, self.overhead_since_mark = now, 0.0
        if self.untimed:
            self.untimed -= 1
        else:
            self.step_seconds += took
            self.steps_timed += 1
            self.recent.append(took)
        if self.decaying:
            return self._replan_decay(iteration) if self._plan_due() else None
        changed = None
        decay_begins = self.plan is not None and iteration >= self.plan.constant
        if self._plan_due() or (decay_begins and self.steps_timed):
            changed = self._replan(iteration)  # also once more as the decay begins, with all that is known
        if self.plan is not None and iteration >= self.plan.constant:
            self.decaying = True  # the decay begins with the next iteration: from here its start holds
        return changed

    def time_is_up(self) -> bool:
        """During the decay: stop now if the end of the run (a checkpoint and the export) would pass the budget."""
        return self.decaying and self.spent() + self._closing_cost() > self.seconds

    # ------------------------------------------------------------ planning
    @property
    def rate(self) -> float | None:
        """Seconds per iteration: over the steps since the last check when there are enough of them (the
        machine's speed now), else over all timed so far."""
        if len(self.recent) >= TIMED_ITERATIONS:
            return sum(self.recent) / len(self.recent)
        return self.step_seconds / self.steps_timed if self.steps_timed else None

    def _plan_due(self) -> bool:
        if self.plan is None:
            return self.steps_timed >= TIMED_ITERATIONS or (self.steps_timed and self.spent() > 0.1 * self.seconds)
        return self.steps_timed >= TIMED_ITERATIONS and self.spent() >= self.next_check  # resumed: time it first

    def _closing_cost(self) -> float:
        """The final checkpoint, the last sample grid and the export, as measured, else guessed from the step
        (the first grid, at iteration 0, is measured before any step)."""
        checkpoint = self.costs.get("checkpoint", FIRST_GUESS * (self.rate or 0.0))
        export = self.costs.get("export", checkpoint)  # an export writes what a checkpoint does
        return checkpoint + self.costs.get("sample", 0.0) + export

    def _replan(self, iteration: int) -> Plan | None:
        """Fit the plan to the time left. While the lr is constant a new end costs nothing, so the fresh
        plan is always taken; it is announced when it moved the end by more than DRIFT."""
        plan = self.fit(iteration)
        self._checked()
        if plan == self.plan:
            return None
        if self.plan is None or abs(plan.total - self.announced) > DRIFT * self.announced:
            self._announce(plan, self.plan is None)
            self.announced = plan.total
        self.plan = plan
        return plan

    def _replan_decay(self, iteration: int) -> Plan | None:
        """In the decay: when the end has moved by more than DRIFT of the iterations left (and more than one),
        the line starts again from the learning rate reached (the factor iteration - 1 trained at) and falls
        to the new end; else the plan holds. A few iterations short, found late, are mended late."""
        fitted = self.fit(iteration)
        self._checked()
        if abs(fitted.total - self.plan.total) <= max(DRIFT * (self.plan.total - iteration), 1):
            return None
        reached = Schedule.from_plan(self.plan).lr_factor(iteration - 1)
        self.plan = Plan(fitted.total, self.plan.constant, fitted.bound, knot=iteration, knot_factor=reached)
        if abs(self.plan.total - self.announced) > DRIFT * self.announced:  # small mends are made, not said
            log.info("re-planned in the decay: %s iterations (the step now takes %.3g s); the learning rate falls "
                     "from %.3g of its start to the new end", f"{self.plan.total:,}", self.rate, reached)
            self.announced = self.plan.total
        return self.plan

    def _checked(self) -> None:
        """After a check: the next one in REPLAN_SHARE of the budget, timed on the steps from here."""
        self.next_check = self.spent() + REPLAN_SHARE * self.seconds
        self.recent = self.recent[-1:] if len(self.recent) < TIMED_ITERATIONS else []

    def fit(self, iteration: int) -> Plan:
        """The plan that ends at the budget from here, at the measured rate with each overhead counted
        per iteration (a sample grid every `sample_every`, a checkpoint every `checkpoint_every`).
        Raises TrainingError when not even one more iteration fits."""
        sample_every, checkpoint_every = self.every
        step = self.rate
        per_iteration = (step + self.costs.get("sample", 0.0) / sample_every
                         + self.costs.get("checkpoint", FIRST_GUESS * step) / checkpoint_every)
        left = self.seconds - self.spent() - self._closing_cost()
        more = math.floor(left / per_iteration) if left > 0 else 0
        if iteration + more < 1 or (iteration <= WARMUP_ITERATIONS + TIMED_ITERATIONS and more < 1):
            raise TrainingError(
                f"--time {format_duration(self.seconds)} is too small: one iteration takes {step:.2g} s here and "
                f"the start and the last checkpoint, grid and export {self.spent() + self._closing_cost():.0f} s; "
                f"give at least {format_duration(self.spent() + self._closing_cost() + 10 * per_iteration)}")
        total = iteration + more
        bound = "time"
        if self.max_steps is not None and self.max_steps < total:
            total, bound = max(self.max_steps, iteration), "max-steps"
        constant = min(total, max(iteration, round(total * self.constant_share)))
        return Plan(total, constant, bound)

    def _announce(self, plan: Plan, first: bool) -> None:
        if first:
            head = f"planned {plan.total:,} iterations in {format_duration(self.seconds)}"
        else:
            head = f"re-planned: {plan.total:,} iterations (the step now takes {self.rate:.3g} s)"
        tail = f": {plan.constant:,} constant, {plan.decay:,} decay"
        if plan.bound == "max-steps":
            tail += f" (--max-steps {self.max_steps:,} binds first; the time would allow more)"
        elif self.max_steps is not None:
            tail += f" (the time binds first, before --max-steps {self.max_steps:,})"
        log.info("%s%s" + ("; %.3g s per iteration measured" if first else ""), head, tail,
                 *((self.rate,) if first else ()))

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """What a checkpoint keeps: the budget, the time spent, the plan, what the overheads cost and --max-steps."""
        return {"seconds": self.seconds, "spent": self.spent(), "constant_share": self.constant_share,
                "plan": asdict(self.plan) if self.plan else None, "decaying": self.decaying, "costs": self.costs,
                "max_steps": self.max_steps}

    @classmethod
    def from_state(cls, state: dict, max_steps: int | None = None, started: float | None = None, clock=None,
                   every: tuple[int, int] = (500, 1000)) -> TimeBudget:
        plan = Plan(**state["plan"]) if state.get("plan") else None
        decaying = state.get("decaying", state.get("frozen", False))  # "frozen": checkpoints before 2026-12-05
        if max_steps is None:  # the run's own --max-steps still binds a re-plan after --resume
            max_steps = state.get("max_steps") or (plan.total if plan and plan.bound == "max-steps" else None)
        budget = cls(state["seconds"], state["constant_share"], max_steps, state["spent"], plan, decaying,
                     started, clock, every)
        budget.costs = dict(state.get("costs", {}))
        return budget

    def refuse_if_spent(self) -> None:
        """Before the first iteration: the start (frames, networks) may already have used the budget."""
        if self.spent() >= self.seconds:
            raise TrainingError(f"--time {format_duration(self.seconds)} is used up before the first iteration "
                                f"(the start took {self.spent():.0f} s); give a longer budget")


class _Overhead:
    def __init__(self, budget: TimeBudget, kind: str):
        self.budget, self.kind = budget, kind

    def __enter__(self):
        self.began = self.budget.clock()

    def __exit__(self, *exc):
        took = self.budget.clock() - self.began
        self.budget.costs[self.kind] = took
        self.budget.counts[self.kind] = self.budget.counts.get(self.kind, 0) + 1
        self.budget.overhead_since_mark += took
        return False
