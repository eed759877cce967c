"""The learning-rate schedule every run follows: constant, then a linear decay to nearly zero."""

from dataclasses import dataclass

from vidcycle.training.recipe import Recipe


@dataclass(frozen=True)
class Schedule:
    """lr constant for `constant` units, then linear decay over `decay` units (the reference's rule).

    A unit is an epoch (the paper: 100 + 100) or, when the recipe sets
    iterations, one iteration. factor(unit) = 1 - max(0, unit + 1 - constant) /
    (decay + 1), so the last unit trains at lr / (decay + 1).

    A time budget that re-plans during the decay sets a knot: from iteration
    `knot` on, the line starts again from `knot_factor` (the factor iteration
    knot - 1 trained at) and falls to the new end the same way, so the
    learning rate never jumps.
    """

    constant: int
    decay: int
    per_unit: int  # iterations per unit (batches per epoch, or 1)
    knot: int = 0
    knot_factor: float = 1.0

    @classmethod
    def from_recipe(cls, recipe: Recipe, iterations_per_epoch: int) -> "Schedule":
        plan = recipe.schedule
        if plan.iterations or plan.iterations_decay:
            return cls(plan.iterations, plan.iterations_decay, 1)
        return cls(plan.epochs, plan.epochs_decay, iterations_per_epoch)

    @classmethod
    def from_plan(cls, plan) -> "Schedule":
        """The schedule of a time budget's plan (vidcycle.training.budget.Plan), counted in iterations."""
        return cls(plan.constant, plan.decay, 1, plan.knot, plan.knot_factor)

    @property
    def total_iterations(self) -> int:
        return (self.constant + self.decay) * self.per_unit

    def lr_factor(self, iteration: int) -> float:
        unit = iteration // self.per_unit
        if self.knot > self.constant and unit >= self.knot:
            return self.knot_factor * (1.0 - (unit + 1 - self.knot) / float(self.constant + self.decay - self.knot + 1))
        return 1.0 - max(0, unit + 1 - self.constant) / float(self.decay + 1)
