"""Synthetic ground truth for the paper's argument: activations built from a known sparse dictionary.

Each sample is x = sum_i c_i a_i + noise over a random subset of true atoms a_i (unit norm). A fraction of
the atoms is *bipolar*: their coefficient takes either sign (a concept with two poles on one axis, like
man/woman); the others are *unipolar* (coefficient > 0). Feature frequencies follow a power law, as
language-model features roughly do. A signed SAE can recover a bipolar atom with one latent; a non-negative
SAE needs two (one per pole). `recovery` measures exactly that:

- a unipolar atom is recovered by a learned atom d when cos(a, d) >= threshold (for a signed SAE |cos|,
  since its latent may carry the atom with either sign);
- a bipolar atom needs both poles: for a signed SAE one learned atom with |cos| >= threshold covers both;
  for a non-negative SAE, pole +a and pole -a must each have a learned atom with cos >= threshold.
- the split count of a bipolar atom is the number of learned atoms with |cos| >= threshold to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from abstopk_eval.intervals import seed_interval


@dataclass(frozen=True)
class SyntheticConfig:
    d: int = 256
    """Activation dimension."""
    n_atoms: int = 1024
    """True dictionary size."""
    bipolar_fraction: float = 0.3
    """Fraction of atoms whose coefficient takes either sign."""
    mean_active: float = 12.0
    """Expected number of active atoms per sample."""
    zipf_exponent: float = 0.7
    """Atom i fires with probability proportional to (i + 1)^-zipf_exponent."""
    noise: float = 0.02
    """Std of isotropic Gaussian noise per dimension."""
    seed: int = 0


@dataclass
class SyntheticData:
    config: SyntheticConfig
    atoms: torch.Tensor
    """[n_atoms, d] unit-norm true dictionary."""
    bipolar: torch.Tensor
    """[n_atoms] bool."""
    probabilities: torch.Tensor
    """[n_atoms] firing probability per sample."""

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        """n samples [n, d] (float32) drawn with generator `g`."""
        fires = torch.rand(n, self.atoms.shape[0], generator=g) < self.probabilities
        magnitude = 0.5 + torch.rand(n, self.atoms.shape[0], generator=g)  # |c| in [0.5, 1.5): clearly on or off
        sign = torch.where(self.bipolar & (torch.rand(n, self.atoms.shape[0], generator=g) < 0.5), -1.0, 1.0)
        coefficients = fires * magnitude * sign
        return coefficients @ self.atoms + self.config.noise * torch.randn(n, self.atoms.shape[1], generator=g)


def make_synthetic(config: SyntheticConfig) -> SyntheticData:
    g = torch.Generator().manual_seed(config.seed)
    atoms = torch.nn.functional.normalize(torch.randn(config.n_atoms, config.d, generator=g), dim=-1)
    bipolar = torch.randperm(config.n_atoms, generator=g) < int(config.bipolar_fraction * config.n_atoms)
    weights = (torch.arange(config.n_atoms, dtype=torch.float32) + 1) ** -config.zipf_exponent
    weights = weights[torch.randperm(config.n_atoms, generator=g)]  # frequency independent of polarity
    probabilities = (weights / weights.sum() * config.mean_active).clamp(max=1.0)
    return SyntheticData(config, atoms, bipolar, probabilities)


@dataclass(frozen=True)
class Recovery:
    mean_max_cosine: float
    """Mean over true atoms of the best score (for bipolar atoms under a non-negative SAE, the worse pole's)."""
    frac_recovered: float
    """Fraction of true atoms whose score is >= threshold."""
    frac_unipolar_recovered: float
    frac_bipolar_recovered: float
    mean_split_count_bipolar: float
    """Mean number of learned atoms with |cos| >= threshold per true bipolar atom."""
    threshold: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@torch.no_grad()
def recovery(
    true_atoms: torch.Tensor, bipolar: torch.Tensor, learned: torch.Tensor, signed: bool, threshold: float = 0.9
) -> Recovery:
    """Score a learned decoder [m, d] against the true atoms [n, d] (see the module docstring)."""
    cos = (
        torch.nn.functional.normalize(true_atoms.float(), dim=-1)
        @ torch.nn.functional.normalize(learned.float(), dim=-1).T
    )
    if signed:
        score = cos.abs().max(dim=1).values
    else:
        positive_pole = cos.max(dim=1).values
        negative_pole = (-cos).max(dim=1).values
        score = torch.where(bipolar, torch.minimum(positive_pole, negative_pole), positive_pole)
    hit = score >= threshold
    split = (cos.abs() >= threshold).sum(dim=1).float()
    mean = lambda t: float(t.float().mean()) if t.numel() else float("nan")  # noqa: E731
    return Recovery(
        mean_max_cosine=mean(score),
        frac_recovered=mean(hit),
        frac_unipolar_recovered=mean(hit[~bipolar]),
        frac_bipolar_recovered=mean(hit[bipolar]),
        mean_split_count_bipolar=mean(split[bipolar]),
        threshold=threshold,
    )


def mean_and_interval(values: list[float]) -> dict[str, float]:
    """Mean and a 95% t-interval half-width across seeds (`intervals.seed_interval`), nan where undefined (the
    benchmark's JSON and table)."""
    interval = seed_interval(values)
    nan = float("nan")
    return {
        "mean": nan if interval.mean is None else interval.mean,
        "ci95": nan if interval.half_width is None else interval.half_width,
        "n": interval.n,
    }
