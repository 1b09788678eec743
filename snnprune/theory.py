"""Closed-form bounds of METHOD.md sections 2-3 and a small discrete LIF simulator for the strong
lottery-ticket construction (Thm 4.3, Appendix C).

Everything here is NumPy and independent of snnTorch, so the formulas can be checked in isolation.

Spike-flip bounds (section 2), for a perturbation that moves a neuron's input by at most ``eps``:

* :func:`flip_bound_single_step`  ``2 * p_sup * eps``                      (Eq. 6, Lemma 3.3)
* :func:`flip_bound_multi_step`   ``2 * p_sup * eps * sum_{n<T} beta^n``  (Lemma 3.4; ``<= ... / (1 - beta)``)
* :func:`flip_bound_layer`        ``N`` times the above                    (Thm 3.5, union bound)

Lottery-ticket construction (section 3): :func:`lemma_c1_success_exact`,
:func:`lemma_c1_success_lower`, :func:`lemma_c1_monte_carlo`, :func:`theorem_k`, and the simulator
(:func:`lif_run`, :class:`TargetSNN`, :func:`build_lth_network`, :class:`LTHNetwork`).

The neuron model is METHOD.md section 1 (hard reset)::

    u[t] = h[t-1] + x[t];   s[t] = [u[t] >= u_th];   h[t] = V_reset * s[t] + beta * u[t] * (1 - s[t])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# ------------------------------------------------------------------------------------ flip bounds


def geometric_factor(beta: float, steps: int | None = None) -> float:
    """``sum_{n=0}^{steps-1} beta^n``: how much a per-step input error ``eps`` can accumulate in the
    potential after ``steps`` steps of agreeing spikes (Lemma 3.4). ``steps=None``: the limit
    ``1 / (1 - beta)``."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if steps is None:
        return 1.0 / (1.0 - beta)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return (1.0 - beta**steps) / (1.0 - beta)


def flip_bound_single_step(p_sup: float | np.ndarray, eps: float | np.ndarray) -> np.ndarray:
    """Lemma 3.3 / Eq. 6: ``P(flip) <= 2 * p_sup * eps`` (not clipped at 1)."""
    return 2.0 * np.asarray(p_sup, dtype=float) * np.asarray(eps, dtype=float)


def flip_bound_multi_step(
    p_sup: float | np.ndarray, eps: float | np.ndarray, beta: float, steps: int | None = None
) -> np.ndarray:
    """Lemma 3.4: ``P(flip at T | outputs agreed before T) <= 2 * p_sup * eps * sum_{n<T} beta^n``.

    ``steps=None`` gives the step-independent form ``2 * p_sup * eps / (1 - beta)``; ``steps=1``
    reduces to Lemma 3.3.
    """
    return flip_bound_single_step(p_sup, eps) * geometric_factor(beta, steps)


def flip_bound_layer(
    p_sup: float | np.ndarray, eps: float | np.ndarray, beta: float, n: int, steps: int | None = None
) -> np.ndarray:
    """Thm 3.5 (union bound over the ``n`` neurons of a layer):
    ``P(any neuron flips at T) <= 2 * n * p_sup * eps / (1 - beta)`` (or with the finite sum)."""
    return n * flip_bound_multi_step(p_sup, eps, beta, steps)


# ------------------------------------------------------------------------------ Lemma C.1 and k


def c_th(u_th: float) -> float:
    """``C_th = (1 - u_th) / 2``: the probability that ``v ~ U[-1, 1]`` satisfies ``v >= u_th``."""
    if not 0.0 < u_th < 1.0:
        raise ValueError(f"the construction needs 0 < u_th < 1 (v ~ U[-1, 1] must reach it), got {u_th}")
    return (1.0 - u_th) / 2.0


def weight_hit_probability(w_hat: float | np.ndarray, eps: float) -> np.ndarray:
    """``P(|w~ - w^| <= eps)`` for ``w~ ~ U[-1, 1]``: the length of ``[w^-eps, w^+eps] ∩ [-1, 1]``
    over 2. Equals ``eps`` when ``|w^| <= 1 - eps``."""
    w = np.asarray(w_hat, dtype=float)
    return np.clip(np.minimum(w + eps, 1.0) - np.maximum(w - eps, -1.0), 0.0, None) / 2.0


def lemma_c1_success_exact(k: int | np.ndarray, eps: float, u_th: float, w_hat: float = 0.0) -> np.ndarray:
    """Exact probability that at least one of ``k`` candidates ``(v, w~)`` i.i.d. ``U[-1, 1]^2`` has
    ``v >= u_th`` and ``|w~ - w^| <= eps``: ``1 - (1 - C_th * q)^k`` with ``q`` from
    :func:`weight_hit_probability` (``q = eps`` for ``|w^| <= 1 - eps``, METHOD.md Lemma C.1)."""
    p_one = c_th(u_th) * weight_hit_probability(w_hat, eps)
    return 1.0 - (1.0 - p_one) ** np.asarray(k, dtype=float)


def lemma_c1_success_lower(k: int | np.ndarray, eps: float, u_th: float) -> np.ndarray:
    """Lemma C.1's bound: success probability ``>= 1 - exp(-k * C_th * eps)`` (for ``|w^| <= 1 - eps``)."""
    return 1.0 - np.exp(-np.asarray(k, dtype=float) * c_th(u_th) * eps)


def lemma_c1_k(eps: float, delta: float, u_th: float) -> int:
    """Candidates per weight that Lemma C.1 asks for: ``ceil(log(1/delta) / (C_th * eps))``."""
    return math.ceil(math.log(1.0 / delta) / (c_th(u_th) * eps))


def lemma_c1_monte_carlo(
    k: int, eps: float, u_th: float, w_hat: float = 0.0, trials: int = 10_000,
    rng: np.random.Generator | None = None,
) -> float:
    """Monte Carlo estimate of the Lemma C.1 success probability: ``trials`` independent draws of
    ``k`` candidates ``(v, w~) ~ U[-1, 1]^2``; the fraction of draws with at least one good one."""
    rng = rng if rng is not None else np.random.default_rng()
    successes = 0
    chunk = max(1, 2_000_000 // max(k, 1))
    done = 0
    while done < trials:
        n = min(chunk, trials - done)
        v = rng.uniform(-1.0, 1.0, size=(n, k))
        w = rng.uniform(-1.0, 1.0, size=(n, k))
        good = (v >= u_th) & (np.abs(w - w_hat) <= eps)
        successes += int(good.any(axis=1).sum())
        done += n
    return successes / trials


@dataclass(frozen=True)
class TheoremK:
    """Sizes asked for by Thm 4.3 / C.6 (METHOD.md section 3).

    ``per_connection``: candidates (virtual neurons) per target connection,
    ``ceil(N / (C_th * eps) * log(N^2 L / (delta - N C L T eps)))``; ``per_layer``: ``N^2`` times it
    (the theorem's k); ``weight_tolerance``: the per-weight error ``eps / N`` a candidate must meet;
    ``margin``: ``delta - N C L T eps`` (must be > 0), with ``C = 2 p_sup / (1 - beta)``.
    """

    per_connection: int
    per_layer: int
    weight_tolerance: float
    margin: float


def theorem_k(
    n: int, layers: int, steps: int, eps: float, delta: float, u_th: float, p_sup: float, beta: float
) -> TheoremK:
    """The width Thm 4.3 asks for, so that the sub-network's spikes equal the target's at every
    step with probability >= ``1 - delta``. Raises ``ValueError`` when ``delta <= N C L T eps``
    (the theorem then promises nothing)."""
    big_c = 2.0 * p_sup / (1.0 - beta)
    margin = delta - n * big_c * layers * steps * eps
    if margin <= 0:
        raise ValueError(
            f"delta={delta} <= N*C*L*T*eps={n * big_c * layers * steps * eps:.3g}: choose a smaller eps"
        )
    per = math.ceil(n / (c_th(u_th) * eps) * math.log(n * n * layers / margin))
    return TheoremK(per, n * n * per, eps / n, margin)


# --------------------------------------------------------------------------------- LIF simulator


def lif_run(
    currents: np.ndarray, beta: float, u_th: float, v_reset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Run LIF neurons (METHOD.md section 1, hard reset) on input currents ``x[t]``.

    Args:
        currents: ``[T, ...]`` input current of every neuron at every step.
    Returns:
        ``(spikes, u)``, both shaped like ``currents``: spikes as float 0/1 and the pre-threshold
        potential ``u[t] = h[t-1] + x[t]``.
    """
    h = np.zeros(currents.shape[1:], dtype=float)
    spikes = np.zeros(currents.shape, dtype=float)
    potentials = np.zeros(currents.shape, dtype=float)
    for t in range(currents.shape[0]):
        u = h + currents[t]
        s = (u >= u_th).astype(float)
        h = v_reset * s + beta * u * (1.0 - s)
        spikes[t], potentials[t] = s, u
    return spikes, potentials


def _layer_run(weight: np.ndarray, spikes_in: np.ndarray, beta: float, u_th: float) -> tuple[np.ndarray, np.ndarray]:
    """One fully connected LIF layer: ``x[t] = spikes_in[t] @ weight.T``; returns ``(spikes, u)``."""
    return lif_run(spikes_in @ weight.T, beta, u_th)


@dataclass
class TargetSNN:
    """A fully connected target SNN without biases (the network the construction must reproduce).

    ``weights[l]``: ``[N_out, N_in]``. Inputs are spike trains ``[T, B, N_in]``.
    """

    weights: list[np.ndarray]
    beta: float = 0.5
    u_th: float = 0.5

    @classmethod
    def random(cls, n: int, layers: int, rng: np.random.Generator, beta: float = 0.5, u_th: float = 0.5) -> TargetSNN:
        """``layers`` layers of ``n x n`` weights drawn from ``U[-1/sqrt(n), 1/sqrt(n)]`` (METHOD.md section 3)."""
        bound = 1.0 / math.sqrt(n)
        return cls([rng.uniform(-bound, bound, size=(n, n)) for _ in range(layers)], beta, u_th)

    def run(self, inputs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Spikes and potentials of every layer: two lists of ``[T, B, N]`` arrays."""
        spikes, potentials, s = [], [], inputs
        for w in self.weights:
            s, u = _layer_run(w, s, self.beta, self.u_th)
            spikes.append(s)
            potentials.append(u)
        return spikes, potentials


@dataclass
class LTHNetwork:
    """The sub-network selected by the mask B of the construction (Thm 4.3).

    Every target connection ``i -> j`` of layer ``l`` became ``k`` virtual LIF neurons, each with an
    in-weight ``v`` from input ``i`` and an out-weight ``w~`` to neuron ``j``. The mask keeps one per
    connection: ``v[l][j, i]`` and ``w[l][j, i]`` hold the kept candidate (``kept[l][j, i]`` False
    when no candidate had ``v >= u_th``; that connection is then absent). Pruned virtual neurons
    have no kept outgoing edge, so they cannot influence any output and are not simulated.

    ``good[l][j, i]``: the kept candidate also meets the weight tolerance of the construction.
    """

    v: list[np.ndarray]
    w: list[np.ndarray]
    kept: list[np.ndarray]
    good: list[np.ndarray]
    k: int
    beta: float
    u_th: float
    virtual_spikes: list[np.ndarray] = field(default_factory=list)

    def run(self, inputs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Simulate the sub-network (2 LIF layers per target layer: virtual neurons, then the
        neurons that correspond to the target's). Returns spikes and potentials of the latter.
        The virtual layers' spikes ``[T, B, N_out, N_in]`` are stored in ``virtual_spikes``."""
        spikes, potentials, s = [], [], inputs
        self.virtual_spikes = []
        for v, w, kept in zip(self.v, self.w, self.kept):
            # virtual neuron (j, i) receives v[j, i] * s_i[t]
            virt, _ = lif_run(s[:, :, None, :] * (v * kept)[None, None], self.beta, self.u_th)
            virt = virt * kept
            self.virtual_spikes.append(virt)
            s, u = lif_run(np.einsum("tbji,ji->tbj", virt, w * kept), self.beta, self.u_th)
            spikes.append(s)
            potentials.append(u)
        return spikes, potentials


def build_lth_network(
    target: TargetSNN, k: int, rng: np.random.Generator, weight_tolerance: float | None = None,
    chunk: int = 1 << 16,
) -> LTHNetwork:
    """Draw the large random network for ``target`` (``k`` candidates per connection, ``v, w~``
    i.i.d. ``U[-1, 1]``) and select the mask B: for every connection, among the candidates with
    ``v >= u_th``, the one whose ``w~`` is closest to the target weight.

    Candidates are drawn in chunks of ``chunk`` so that huge ``k`` fits in memory; only the running
    best survives. ``good`` marks the kept candidates with ``|w~ - w^| <= weight_tolerance``
    (all kept ones when ``weight_tolerance`` is None).
    """
    vs, ws, keeps, goods = [], [], [], []
    for w_hat in target.weights:
        best_err = np.full(w_hat.shape, np.inf)
        best_v = np.zeros(w_hat.shape)
        best_w = np.zeros(w_hat.shape)
        done = 0
        while done < k:
            n = min(chunk, k - done)
            v = rng.uniform(-1.0, 1.0, size=(*w_hat.shape, n))
            w = rng.uniform(-1.0, 1.0, size=(*w_hat.shape, n))
            err = np.where(v >= target.u_th, np.abs(w - w_hat[..., None]), np.inf)
            idx = err.argmin(axis=-1)[..., None]
            e = np.take_along_axis(err, idx, -1)[..., 0]
            better = e < best_err
            best_err = np.where(better, e, best_err)
            best_v = np.where(better, np.take_along_axis(v, idx, -1)[..., 0], best_v)
            best_w = np.where(better, np.take_along_axis(w, idx, -1)[..., 0], best_w)
            done += n
        kept = np.isfinite(best_err)
        good = kept & (best_err <= weight_tolerance) if weight_tolerance is not None else kept.copy()
        vs.append(best_v)
        ws.append(best_w)
        keeps.append(kept)
        goods.append(good)
    return LTHNetwork(vs, ws, keeps, goods, k, target.beta, target.u_th)


def identical_outputs(a: list[np.ndarray], b: list[np.ndarray], last_only: bool = True) -> np.ndarray:
    """Per input ``[B]``: True when the spike records agree at every step and neuron (of the last
    layer, or of every layer with ``last_only=False``)."""
    pairs = [(a[-1], b[-1])] if last_only else list(zip(a, b))
    same = np.ones(a[-1].shape[1], dtype=bool)
    for x, y in pairs:
        same &= (x == y).all(axis=(0, 2))
    return same
