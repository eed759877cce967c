"""Learning from footage: recipes, frames and their cache, the run scaffold (run.py) and its two methods,
CycleGAN training (trainer.py) and distillation into students (distillation.py), and several processes
under torchrun."""
