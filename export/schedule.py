"""The noise schedule and its respacing, in float64 (improved-diffusion's recipe)."""
import math

import numpy as np


SCHEDULE_PARAM = {"offset": 1e-4, "max_beta": 0.999}  # written into the manifest; the runtime reads them there


def alpha_bar_fn(name):
    if name == "sqrt":
        offset = SCHEDULE_PARAM["offset"]
        return lambda s: 1.0 - math.sqrt(s + offset)  # abar(s) = 1 - sqrt(s + offset), s = t/T
    raise ValueError(f"unknown schedule {name!r}; allowed: 'sqrt'")


def betas_for(name, T, max_beta=SCHEDULE_PARAM["max_beta"]):
    """beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta), t = 0..T-1."""
    fn = alpha_bar_fn(name)
    return np.array([min(1.0 - fn((t + 1) / T) / fn(t / T), max_beta) for t in range(T)], dtype=np.float64)


def alpha_bar(name, T):
    return np.cumprod(1.0 - betas_for(name, T))


def respaced_timesteps(T, steps):
    """`steps` timesteps evenly spaced over 0..T-1 (improved-diffusion space_timesteps)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    if steps == 1:
        return [0]
    stride = (T - 1) / (steps - 1)
    return sorted({round(i * stride) for i in range(steps)})


def respace(alpha_bar_full, timesteps):
    """Betas recomputed over the kept steps: beta_i = 1 - abar_{t_i} / abar_{t_(i-1)}."""
    kept = alpha_bar_full[timesteps]
    prev = np.concatenate([[1.0], kept[:-1]])
    return 1.0 - kept / prev


class Diffusion:
    """Posterior coefficients of a (possibly respaced) schedule, indexed by step i."""

    def __init__(self, betas, timestep_map):
        self.betas = np.asarray(betas, dtype=np.float64)
        self.timestep_map = np.asarray(timestep_map, dtype=np.int64)  # step i -> model's t
        alphas = 1.0 - self.betas
        self.alpha_bar = np.cumprod(alphas)
        self.alpha_bar_prev = np.concatenate([[1.0], self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = np.sqrt(self.alpha_bar)
        self.sqrt_one_minus_alpha_bar = np.sqrt(1.0 - self.alpha_bar)
        # q(x_{t-1} | x_t, x0) = N(coef1 * x0 + coef2 * x_t, posterior_variance)
        self.posterior_variance = self.betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        self.posterior_mean_coef2 = (1.0 - self.alpha_bar_prev) * np.sqrt(alphas) / (1.0 - self.alpha_bar)
        # "fixed large" variance of the reference code: posterior variance at step 0, beta after
        first = self.posterior_variance[1] if len(self.betas) > 1 else self.posterior_variance[0]
        self.model_variance = np.concatenate([[first], self.betas[1:]])

    @classmethod
    def full(cls, name, T):
        return cls(betas_for(name, T), list(range(T)))

    @classmethod
    def respaced(cls, name, T, steps):
        timesteps = respaced_timesteps(T, steps)
        return cls(respace(alpha_bar(name, T), timesteps), timesteps)

    @property
    def num_steps(self):
        return len(self.betas)

    def q_sample(self, x0, i, noise):
        """x_i ~ q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) I), per sequence; i: step indices [B]."""
        import torch  # here, not above: the onnxruntime engines of bench read this module without it

        sqrt_ab = torch.as_tensor(self.sqrt_alpha_bar, dtype=x0.dtype, device=x0.device)[i][:, None, None]
        sqrt_1mab = torch.as_tensor(self.sqrt_one_minus_alpha_bar, dtype=x0.dtype, device=x0.device)[i][:, None, None]
        return sqrt_ab * x0 + sqrt_1mab * noise
