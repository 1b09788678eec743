"""Closed-form checks of snnprune.theory (bounds, Lemma C.1, the LTH construction) and of
snnprune.analysis helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnprune import analysis, theory


def test_geometric_factor():
    assert theory.geometric_factor(0.5) == pytest.approx(2.0)
    assert theory.geometric_factor(0.5, 1) == pytest.approx(1.0)
    assert theory.geometric_factor(0.5, 3) == pytest.approx(1.75)
    with pytest.raises(ValueError):
        theory.geometric_factor(1.0)


def test_flip_bounds():
    assert theory.flip_bound_single_step(0.5, 0.01) == pytest.approx(0.01)
    assert theory.flip_bound_multi_step(0.5, 0.01, 0.5) == pytest.approx(0.02)
    assert theory.flip_bound_multi_step(0.5, 0.01, 0.5, steps=1) == pytest.approx(0.01)
    assert theory.flip_bound_layer(0.5, 0.01, 0.5, 10) == pytest.approx(0.2)
    np.testing.assert_allclose(theory.flip_bound_single_step(1.0, np.array([0.1, 0.2])), [0.2, 0.4])


def test_lemma_33_holds_for_uniform_potential():
    # u ~ U[0, 2] has density 0.5 everywhere: P(|u - 1| <= eps) = 2 * 0.5 * eps, the bound with equality
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 2, 200_000)
    eps = 0.05
    mass = np.mean(np.abs(u - 1.0) <= eps)
    assert mass == pytest.approx(float(theory.flip_bound_single_step(0.5, eps)), rel=0.05)


def test_c_th_and_hit_probability():
    assert theory.c_th(0.5) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        theory.c_th(1.0)
    assert theory.weight_hit_probability(0.0, 0.1) == pytest.approx(0.1)
    assert theory.weight_hit_probability(0.95, 0.1) == pytest.approx((1.0 - 0.85) / 2)


def test_lemma_c1_exact_formula_and_bound():
    k = np.array([1, 10, 100, 1000])
    exact = theory.lemma_c1_success_exact(k, 0.05, 0.5)
    np.testing.assert_allclose(exact, 1 - (1 - 0.25 * 0.05) ** k)
    assert np.all(exact >= theory.lemma_c1_success_lower(k, 0.05, 0.5))
    assert theory.lemma_c1_success_lower(1, 0.05, 0.5) == pytest.approx(1 - math.exp(-0.0125))


def test_lemma_c1_monte_carlo_matches_exact():
    rng = np.random.default_rng(1)
    k, eps, u_th, trials = 80, 0.05, 0.5, 20_000
    est = theory.lemma_c1_monte_carlo(k, eps, u_th, 0.2, trials, rng)
    exact = float(theory.lemma_c1_success_exact(k, eps, u_th, 0.2))
    assert abs(est - exact) < 4 * math.sqrt(exact * (1 - exact) / trials)


def test_lemma_c1_k_reaches_one_minus_delta():
    k = theory.lemma_c1_k(0.05, 0.1, 0.5)
    assert theory.lemma_c1_success_lower(k, 0.05, 0.5) >= 0.9
    assert theory.lemma_c1_success_lower(k - 1, 0.05, 0.5) < 0.9


def test_theorem_k():
    r = theory.theorem_k(n=4, layers=2, steps=3, eps=1e-3, delta=0.1, u_th=0.5, p_sup=1.0, beta=0.5)
    margin = 0.1 - 4 * 4.0 * 2 * 3 * 1e-3
    assert r.margin == pytest.approx(margin)
    assert r.per_connection == math.ceil(4 / (0.25 * 1e-3) * math.log(16 * 2 / margin))
    assert r.per_layer == 16 * r.per_connection
    assert r.weight_tolerance == pytest.approx(2.5e-4)
    with pytest.raises(ValueError):
        theory.theorem_k(4, 2, 3, eps=1.0, delta=0.1, u_th=0.5, p_sup=1.0, beta=0.5)


def test_lif_run_hard_reset():
    currents = np.array([0.6, 0.6, 0.0, 1.5])[:, None]
    spikes, u = theory.lif_run(currents, beta=0.5, u_th=1.0)
    # u1 = 0.6 (no spike), u2 = 0.3 + 0.6 = 0.9, u3 = 0.45, u4 = 0.225 + 1.5 -> spike
    np.testing.assert_allclose(u[:, 0], [0.6, 0.9, 0.45, 1.725])
    np.testing.assert_array_equal(spikes[:, 0], [0, 0, 0, 1])
    spikes, u = theory.lif_run(np.array([[1.2], [0.5]]), beta=0.5, u_th=1.0)
    np.testing.assert_allclose(u[:, 0], [1.2, 0.5])  # hard reset to 0 after the spike


def test_construction_virtual_neurons_copy_inputs_and_converges():
    rng = np.random.default_rng(0)
    target = theory.TargetSNN.random(4, 2, rng, beta=0.5, u_th=0.25)
    assert all(np.abs(w).max() <= 0.5 for w in target.weights)
    inputs = (rng.random((4, 50, 4)) < 0.5).astype(float)
    t_spikes, _ = target.run(inputs)
    net = theory.build_lth_network(target, 5000, rng, weight_tolerance=0.01, chunk=1000)
    assert all(k.all() for k in net.kept)
    assert all(np.all(v >= 0.25) for v in net.v)
    s, _ = net.run(inputs)
    first = net.virtual_spikes[0]
    np.testing.assert_array_equal(first, np.broadcast_to(inputs[:, :, None, :], first.shape))
    # candidates are close, so nearly every input gives identical spikes
    assert theory.identical_outputs(t_spikes, s, last_only=False).mean() >= 0.9
    # the exact target weights reproduce the target exactly
    exact = theory.LTHNetwork([np.ones_like(w) for w in target.weights], [w.copy() for w in target.weights],
                              [np.ones((4, 4), bool)] * 2, [np.ones((4, 4), bool)] * 2, 1, 0.5, 0.25)
    assert theory.identical_outputs(t_spikes, exact.run(inputs)[0], last_only=False).all()


def test_flip_statistics_conditioning():
    ref = torch.zeros(3, 2, 2)
    pert = ref.clone()
    pert[0, 0, 0] = 1  # sample 0 neuron 0 flips at t=0
    pert[1, 0, 0] = 1  # flips again at t=1, but its history disagreed: not counted
    pert[1, 1, 1] = 1  # sample 1 neuron 1 flips at t=1
    fs = analysis.flip_statistics(ref, pert)
    assert fs.neuron_rate[0] == pytest.approx(0.25)
    assert fs.neuron_count[1] == 3 and fs.neuron_rate[1] == pytest.approx(1 / 3)
    assert fs.layer_rate[0] == pytest.approx(0.5)
    assert fs.layer_count[1] == 1 and fs.layer_rate[1] == pytest.approx(1.0)
    both = analysis.flip_statistics(ref, [pert, ref])
    assert both.neuron_rate[0] == pytest.approx(0.25)


def test_density_near_threshold():
    u = np.linspace(0, 2, 100_001)[:-1]  # uniform on [0, 2): density 0.5
    edges, dens = analysis.density_near_threshold(u, 1.0, 0.5, 10)
    np.testing.assert_allclose(dens, 0.5, rtol=1e-3)
    assert analysis.p_sup_estimate(np.stack([u, u])[:, :, None], 1.0, 0.5, 10) == pytest.approx(0.5, rel=1e-3)
    _, per = analysis.density_near_threshold(np.stack([u, u], 1), 1.0, 0.5, 10, axis=1)
    assert per.shape == (2, 10)
    np.testing.assert_allclose(per, 0.5, rtol=1e-3)


def test_record_perturbation_and_ablation():
    from snnprune.models import build

    torch.manual_seed(0)
    model = build("mlp", hidden=(16, 16), num_steps=3)
    x = torch.rand(8, 1, 8, 8)
    ref = analysis.record(model, x)
    assert set(ref.spikes) == {"lifs.0", "lifs.1"} and ref.mem["lifs.0"].shape == (3, 8, 16)
    pert = analysis.record(model, x, {"lifs.0": 0.1})
    # first step: the potential moves by exactly eps
    torch.testing.assert_close(pert.mem["lifs.0"][0], ref.mem["lifs.0"][0] + 0.1)
    before = model.fcs[1].weight.detach().clone()
    res = analysis.single_weight_ablation(model, "fcs.1", "lifs.1", np.array([[0, 0], [1, 2]]), x)
    assert torch.equal(model.fcs[1].weight.detach(), before)
    assert res.layer_flips.shape == (2,) and np.all(res.layer_flips >= 0)


def test_spearman():
    rho, _ = analysis.spearman(np.arange(10), np.arange(10) ** 2)
    assert rho == pytest.approx(1.0)
