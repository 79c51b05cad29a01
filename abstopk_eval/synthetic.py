"""Synthetic ground truth for the paper's argument: activations built from a known sparse dictionary.

Each sample is x = sum_i c_i a_i + noise over a random subset of true atoms a_i (unit norm). A fraction of
the atoms is *bipolar*: their coefficient takes either sign (a concept with two poles on one axis, like
man/woman); the others are *unipolar* (coefficient > 0). Feature frequencies follow a power law, as
language-model features roughly do. A signed SAE can recover a bipolar atom with one latent; a non-negative
SAE needs two (one per pole). `recovery` measures exactly that, from the decoder AND the latents' activity on
held-out samples whose true coefficients are known:

- latent j is a *candidate* for true atom i when |cos(D_j, a_i)| >= `threshold`; write r = sign(cos(D_j, a_i)),
  so latent j adds sign(z_j) r a_i to the reconstruction;
- latent j *carries pole +* of atom i when, on the held-out samples with c_i > 0, sign(z_j) r = +1 (active,
  z != 0, with the matching sign) on at least `min_sign_rate` of them; *pole -* likewise on the samples with
  c_i < 0 (sign(z_j) r = -1);
- a unipolar atom is recovered when one candidate carries pole +; a bipolar atom is recovered *by one latent*
  when one candidate carries both poles, *split* when no candidate carries both but two candidates carry one
  pole each (what a ReLU / TopK SAE must do: d for one pole, -d for the other), and recovered if either;
- the split count of a bipolar atom is the number of candidates carrying at least one of its poles.

An atom with no held-out sample on one of its poles cannot be scored and is left out (counted in `n_unscored`).
`decoder_recovery` keeps the decoder-only cosine score (no activity check) for comparison.
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
        return self.sample_with_coefficients(n, g)[0]

    def sample_with_coefficients(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples [n, d] and their true coefficients [n, n_atoms] (0 where the atom is off)."""
        fires = torch.rand(n, self.atoms.shape[0], generator=g) < self.probabilities
        magnitude = 0.5 + torch.rand(n, self.atoms.shape[0], generator=g)  # |c| in [0.5, 1.5): clearly on or off
        sign = torch.where(self.bipolar & (torch.rand(n, self.atoms.shape[0], generator=g) < 0.5), -1.0, 1.0)
        coefficients = fires * magnitude * sign
        x = coefficients @ self.atoms + self.config.noise * torch.randn(n, self.atoms.shape[1], generator=g)
        return x, coefficients


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
    frac_recovered: float
    """Fraction of scored true atoms recovered (bipolar: by one latent or split)."""
    frac_unipolar_recovered: float
    frac_bipolar_recovered: float
    """Both poles carried, by one latent or by two."""
    frac_bipolar_one_latent: float
    """Both poles carried by one latent (possible only for signed latents)."""
    frac_bipolar_split: float
    """Both poles carried, but only by two different latents."""
    mean_split_count_bipolar: float
    """Mean number of candidates carrying at least one pole, per scored bipolar atom."""
    mean_max_cosine: float
    """Decoder only: mean over true atoms of the best |cos| (signed) or the worse pole's best cos (non-negative)."""
    n_unscored: int
    """True atoms without a held-out sample on one of their poles."""
    threshold: float
    min_sign_rate: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _cosines(true_atoms: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    return (
        torch.nn.functional.normalize(true_atoms.float(), dim=-1)
        @ torch.nn.functional.normalize(learned.float(), dim=-1).T
    )


def decoder_score(cos: torch.Tensor, bipolar: torch.Tensor, signed: bool) -> torch.Tensor:
    """[n_atoms] the decoder-only score: best |cos| for a signed SAE; for a non-negative one the best cos, and for
    a bipolar atom the worse of its two poles' best cos."""
    if signed:
        return cos.abs().max(dim=1).values
    positive_pole = cos.max(dim=1).values
    negative_pole = (-cos).max(dim=1).values
    return torch.where(bipolar, torch.minimum(positive_pole, negative_pole), positive_pole)


@torch.no_grad()
def recovery(
    true_atoms: torch.Tensor,
    bipolar: torch.Tensor,
    learned: torch.Tensor,
    latents: torch.Tensor,
    coefficients: torch.Tensor,
    signed: bool,
    threshold: float = 0.9,
    min_sign_rate: float = 0.5,
) -> Recovery:
    """Score a learned decoder [m, d] and its latents [N, m] on held-out samples with true `coefficients` [N, n]
    against the true atoms [n, d] (see the module docstring)."""
    cos = _cosines(true_atoms, learned)
    candidate = cos.abs() >= threshold
    r_pos = cos > 0
    z_pos, z_neg = (latents > 0).float(), (latents < 0).float()
    c_pos, c_neg = (coefficients > 0).float(), (coefficients < 0).float()
    n_pos, n_neg = c_pos.sum(0), c_neg.sum(0)  # [n]
    # matching sign: on c > 0 samples sign(z) r = +1; on c < 0 samples sign(z) r = -1
    plus = torch.where(r_pos, c_pos.T @ z_pos, c_pos.T @ z_neg) / n_pos.clamp(min=1)[:, None]
    minus = torch.where(r_pos, c_neg.T @ z_neg, c_neg.T @ z_pos) / n_neg.clamp(min=1)[:, None]
    carries_plus = candidate & (plus >= min_sign_rate)
    carries_minus = candidate & (minus >= min_sign_rate)
    one_latent = (carries_plus & carries_minus).any(dim=1)
    split = ~one_latent & carries_plus.any(dim=1) & carries_minus.any(dim=1)
    scored = torch.where(bipolar, (n_pos > 0) & (n_neg > 0), n_pos > 0)
    hit = torch.where(bipolar, one_latent | split, carries_plus.any(dim=1))
    split_count = (carries_plus | carries_minus).sum(dim=1).float()
    mean = lambda t: float(t.float().mean()) if t.numel() else float("nan")  # noqa: E731
    bi, uni = bipolar & scored, ~bipolar & scored
    return Recovery(
        frac_recovered=mean(hit[scored]),
        frac_unipolar_recovered=mean(hit[uni]),
        frac_bipolar_recovered=mean(hit[bi]),
        frac_bipolar_one_latent=mean(one_latent[bi]),
        frac_bipolar_split=mean(split[bi]),
        mean_split_count_bipolar=mean(split_count[bi]),
        mean_max_cosine=mean(decoder_score(cos, bipolar, signed)),
        n_unscored=int((~scored).sum()),
        threshold=threshold,
        min_sign_rate=min_sign_rate,
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
