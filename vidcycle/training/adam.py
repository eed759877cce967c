"""Adam on the CPU as torch's fused kernel runs it, without torch.optim around it.

torch.optim's Optimizer imports torch._dynamo at its first call (its constructor's add_param_group and
every step go through torch's compiler guards): 0.9-1.1 s of every training run's start on a 2-core CPU,
for a compiler a CPU run never uses. `FusedAdam` calls the kernel torch.optim.Adam(fused=True) calls, in
the same order, so the parameters it makes are bit for bit torch's (a test holds them equal), and its
state dict is torch's, so a checkpoint loads into either. Where torch lacks the kernel, `adam` in gan.py
keeps torch.optim.Adam; on CUDA too, where the fp16 grad scaler drives torch's optimizer.
"""

from __future__ import annotations

from collections import defaultdict

import torch

# The hyperparameters torch.optim.Adam keeps in each parameter group, with its defaults: a state dict of
# either optimiser carries the same keys.
TORCH_GROUP = {"eps": 1e-8, "weight_decay": 0, "amsgrad": False, "maximize": False, "foreach": None,
               "capturable": False, "differentiable": False, "fused": True, "decoupled_weight_decay": False}


def fused_kernel_available() -> bool:
    return hasattr(torch, "_fused_adam_")


class FusedAdam:
    """torch.optim.Adam(params, lr, betas, fused=True) for CPU parameters: step, zero_grad, param_groups,
    state, state_dict and load_state_dict as torch's."""

    def __init__(self, parameters, lr: float, betas: tuple[float, float]):
        self.defaults = {"lr": lr, "betas": tuple(betas), **TORCH_GROUP}
        self.param_groups = [{"params": list(parameters), **self.defaults}]
        self.state: defaultdict = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                if set_to_none:
                    parameter.grad = None
                else:
                    parameter.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            by_kind: dict = defaultdict(lambda: ([], [], [], [], []))
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter] or self._start(parameter)
                lists = by_kind[parameter.device, parameter.dtype]
                for kept, value in zip(lists, (parameter, parameter.grad, state["exp_avg"], state["exp_avg_sq"],
                                               state["step"])):
                    kept.append(value)
            beta1, beta2 = group["betas"]
            for parameters, grads, averages, squares, steps in by_kind.values():
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(parameters, grads, averages, squares, [], steps, amsgrad=False, lr=group["lr"],
                                   beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                                   maximize=False, grad_scale=None, found_inf=None)
                torch.autograd.graph.increment_version(parameters)  # changed in place: caches keyed on it see it

    def _start(self, parameter: torch.Tensor) -> dict:
        state = self.state[parameter]
        state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device)
        state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        return state

    def state_dict(self) -> dict:
        """torch.optim's layout: the state by the parameter's index across groups, each group's hyperparameters
        with its parameters' indices."""
        index = {}
        groups = []
        for group in self.param_groups:
            numbers = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": numbers})
        state = {index[id(p)]: value for p, value in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """A state dict of this optimiser or of torch.optim.Adam over the same parameters, in the same order."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(mine["params"]) != len(theirs["params"]) for mine, theirs in zip(self.param_groups, saved)):
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        by_index = {}
        for mine, theirs in zip(self.param_groups, saved):
            by_index.update(zip(theirs["params"], mine["params"]))
            mine.update({k: v for k, v in theirs.items() if k != "params"})
            mine["betas"] = tuple(mine["betas"])
        self.state = defaultdict(dict)
        for number, values in state_dict["state"].items():
            parameter = by_index[number]
            self.state[parameter] = {
                key: value.to(dtype=torch.float32 if key == "step" else parameter.dtype, device=parameter.device)
                for key, value in values.items()}
