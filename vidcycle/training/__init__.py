"""Learning from footage: recipes, frames and their cache, the run scaffold (run.py) and the methods on it:
those that learn from two collections, one module each, described in the table methods.py (CycleGAN in
cyclegan.py, CUT and FastCUT in contrastive.py, built and set up by trainer.py), and distillation into students
(distillation.py); several processes under torchrun."""
