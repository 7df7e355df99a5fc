"""
Tests for pa.py: progress advantage, the baseline scorers, aggregations, metrics, and Proposition 1
checked exactly on a small stochastic tabular MDP solved by soft value iteration.

    python -m pytest -q test_pafns.py
"""
import itertools
import math

import numpy as np
import pytest
import torch

import pa

# -----------------------------------------------------------------------------
# a hand-built batch: row 0 = 2 prompt tokens, 3 action tokens; row 1 = 3 prompt, 1 action, 1 padding

LOGPROBS = torch.tensor([[0.0, -1.0, -0.5, -0.2, -1.5],
                         [0.0, -2.0, -0.1, -0.7, -9.0]])
REF_LOGPROBS = torch.tensor([[0.0, -3.0, -0.4, -0.6, -1.0],
                             [0.0, -0.5, -0.2, -0.2, -4.0]])
ACTION_MASK = torch.tensor([[0, 0, 1, 1, 1],
                            [0, 0, 0, 1, 0]], dtype=torch.float32)

def test_pa_is_beta_times_masked_log_ratio_sum():
    beta = 0.1
    expected = torch.tensor([beta * ((-0.5 + 0.4) + (-0.2 + 0.6) + (-1.5 + 1.0)), beta * (-0.7 + 0.2)])
    got = pa.progress_advantage(LOGPROBS, REF_LOGPROBS, ACTION_MASK, beta)
    assert got.shape == (2,), f"expected shape (2,), got {tuple(got.shape)}"
    assert torch.allclose(got, expected, atol=1e-6), f"expected {expected}, got {got}"

def test_pa_ignores_prompt_and_padding_tokens():
    noisy = LOGPROBS.clone()
    noisy[ACTION_MASK == 0] = torch.randn(int((ACTION_MASK == 0).sum())) * 10
    a = pa.progress_advantage(LOGPROBS, REF_LOGPROBS, ACTION_MASK, 0.1)
    b = pa.progress_advantage(noisy, REF_LOGPROBS, ACTION_MASK, 0.1)
    assert torch.equal(a, b), f"tokens with action_mask 0 changed PA: {a} vs {b}"

def test_pa_is_zero_when_policy_equals_reference():
    got = pa.progress_advantage(LOGPROBS, LOGPROBS.clone(), ACTION_MASK, 0.3)
    assert torch.all(got == 0), f"expected exactly 0 for pi_theta == pi_ref, got {got}"

def test_pa_math_is_at_least_fp32():
    got = pa.progress_advantage(LOGPROBS.bfloat16(), REF_LOGPROBS.bfloat16(), ACTION_MASK.bool(), 0.1)
    assert got.dtype == torch.float32, f"expected fp32 output from bf16 inputs, got {got.dtype}"

def test_logprob_scorers_on_hand_built_batch():
    s = pa.logprob_sum(LOGPROBS, ACTION_MASK)
    m = pa.logprob_mean(LOGPROBS, ACTION_MASK)
    r = pa.ref_logprob_sum(REF_LOGPROBS, ACTION_MASK)
    assert torch.allclose(s, torch.tensor([-2.2, -0.7])), f"logprob_sum: got {s}"
    assert torch.allclose(m, torch.tensor([-2.2 / 3, -0.7])), f"logprob_mean: got {m}"
    assert torch.allclose(r, torch.tensor([-2.0, -0.2])), f"ref_logprob_sum: got {r}"

def test_confidence_peaked_scores_higher_than_flat():
    V, k = 50, 5
    peaked = torch.log_softmax(torch.tensor([8.0] + [0.0] * (V - 1)), dim=-1)
    flat = torch.log_softmax(torch.zeros(V), dim=-1)
    topk = torch.stack([peaked.topk(k).values, flat.topk(k).values])[:, None, :]  # (B=2, T=1, k)
    c = pa.confidence(topk, torch.ones(2, 1))
    assert c[0] > c[1], f"expected peaked ({c[0]:.3f}) > flat ({c[1]:.3f}): higher = more confident"
    assert abs(c[1].item() - math.log(V)) < 1e-5, f"flat over V tokens should give log V, got {c[1]}"

def test_confidence_averages_over_action_tokens_only():
    topk = torch.tensor([[[-1.0, -3.0], [-0.5, -1.5], [-100.0, -100.0]]])  # (1, 3, 2); last token is padding
    c = pa.confidence(topk, torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.allclose(c, torch.tensor([(2.0 + 1.0) / 2])), f"expected mean of 2.0 and 1.0, got {c}"

def test_value_td_is_reward_plus_value_after_minus_before():
    got = pa.value_td(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.8]), torch.tensor([0.7, 0.0]))
    assert torch.allclose(got, torch.tensor([0.2, 0.2])), f"expected r + V(s') - V(s) = [0.2, 0.2], got {got}"

# -----------------------------------------------------------------------------
# Proposition 1 on a stochastic tabular MDP: 5 live states + 1 absorbing terminal, 3 actions

BETA = 0.5

def make_mdp(seed=0, S=6, A=3):
    rng = np.random.default_rng(seed)
    term = S - 1
    P = 0.75 * rng.dirichlet(np.ones(S), size=(S, A))  # every action is genuinely stochastic
    P[:, :, term] += 0.25  # and ends the episode with probability >= 1/4, so values converge
    P[term] = 0.0
    P[term, :, term] = 1.0  # absorbing terminal with zero reward
    R = rng.normal(size=(S, A))
    R[term] = 0.0
    pi_ref = rng.dirichlet(np.ones(A), size=S)
    return P, R, pi_ref

def solved(seed=0):
    P, R, pi_ref = make_mdp(seed)
    Q, V, pi_star = pa.soft_value_iteration(P, R, pi_ref, BETA, n_iters=300)
    return P, R, pi_ref, Q, V, pi_star

def pa_of_each_action(pi_star, pi_ref, dtype):
    # one row per (state, action): a one-token "action" with mask 1
    lp = torch.tensor(np.log(pi_star), dtype=dtype).reshape(-1, 1)
    ref = torch.tensor(np.log(pi_ref), dtype=dtype).reshape(-1, 1)
    return pa.progress_advantage(lp, ref, torch.ones_like(lp), BETA).reshape(pi_star.shape).numpy()

def policy_value(P, R, pi, pi_ref, reward="regularised", n_iters=300):
    # plain (not soft) policy evaluation of a fixed policy, by iterating its Bellman equation
    log_ratio = np.log(pi) - np.log(pi_ref)
    r = {"regularised": R - BETA * log_ratio, "return": R, "pa": BETA * log_ratio}[reward]
    V = np.zeros(P.shape[0])
    for _ in range(n_iters):
        V = (pi * (r + P @ V)).sum(axis=1)
    return V

def test_soft_value_iteration_converged_to_a_distribution():
    P, R, pi_ref, Q, V, pi_star = solved()
    assert np.allclose(pi_star.sum(axis=1), 1.0, atol=1e-12), f"pi* rows should sum to 1: {pi_star.sum(1)}"
    assert np.allclose(Q, R + P @ V, atol=1e-10), "Q should satisfy Q = R + E[V(s')] at convergence"
    assert V[-1] == 0.0, f"the absorbing terminal state should have V = 0, got {V[-1]}"

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_prop1_pa_of_optimal_policy_equals_soft_advantage(dtype, tol):
    for seed in range(3):
        P, R, pi_ref, Q, V, pi_star = solved(seed)
        got = pa_of_each_action(pi_star, pi_ref, dtype)
        err = np.abs(got - (Q - V[:, None])).max()
        assert err < tol, f"seed {seed}: beta*log(pi*/pi_ref) should equal Q* - V*, max error {err:.2e}"

def test_prop1_optimal_policy_attains_v_star_and_beats_others():
    P, R, pi_ref, Q, V, pi_star = solved()
    v_star = policy_value(P, R, pi_star, pi_ref)
    assert np.allclose(v_star, V, atol=1e-9), f"pi* should achieve V*: {v_star} vs {V}"
    rng = np.random.default_rng(1)
    for other in [pi_ref] + [rng.dirichlet(np.ones(3), size=6) for _ in range(5)]:
        v = policy_value(P, R, other, pi_ref)
        assert np.all(v <= V + 1e-9), f"a policy beat the soft optimum: {v} > {V}"

def test_prop1_expected_pa_is_beta_kl_and_nonnegative():
    P, R, pi_ref, Q, V, pi_star = solved()
    expected_pa = (pi_star * pa_of_each_action(pi_star, pi_ref, torch.float64)).sum(axis=1)
    kl = (pi_star * (np.log(pi_star) - np.log(pi_ref))).sum(axis=1)
    assert np.allclose(expected_pa, BETA * kl, atol=1e-10), f"E_pi*[PA] {expected_pa} != beta KL {BETA * kl}"
    assert np.all(expected_pa >= -1e-12), f"E_pi*[PA] should be >= 0 (a soft advantage), got {expected_pa}"
    assert expected_pa[:-1].min() > 0, "live states with pi* != pi_ref should have strictly positive E[PA]"

def test_prop1_ranking_actions_by_pa_equals_ranking_by_q():
    P, R, pi_ref, Q, V, pi_star = solved()
    scores = pa_of_each_action(pi_star, pi_ref, torch.float64)
    for s in range(5):  # live states
        assert list(np.argsort(scores[s])) == list(np.argsort(Q[s])), f"state {s}: PA order != Q* order"

def test_prop1_summed_pa_is_return_minus_v0_in_expectation():
    P, R, pi_ref, Q, V, pi_star = solved()
    expected_sum_pa = policy_value(P, R, pi_star, pi_ref, reward="pa")
    expected_return = policy_value(P, R, pi_star, pi_ref, reward="return")
    assert np.allclose(expected_sum_pa, expected_return - V, atol=1e-9), "E[sum PA] should be E[return] - V*(s0)"

def test_reward_is_not_recoverable_on_a_sampled_path_but_is_in_expectation():
    P, R, pi_ref, Q, V, pi_star = solved()
    s, a = 0, 0
    implied = (Q[s, a] - V[s]) + V[s] - V  # PA + V(s) - V(s') for each possible next state s'
    assert np.abs(implied - R[s, a]).max() > 1e-3, "in a stochastic MDP the per-path implied reward should vary"
    assert abs(P[s, a] @ implied - R[s, a]) < 1e-10, "averaged over s' it should give back the reward"

# -----------------------------------------------------------------------------
# aggregations and attribution predictors

def test_aggregations_on_hand_built_scores():
    want = {"sum": 2.0, "mean": 2.0 / 3, "min": -2.0, "last": 3.0}
    assert set(pa.AGGREGATIONS) == set(want), f"AGGREGATIONS should be {tuple(want)}"
    for how in pa.AGGREGATIONS:
        got = pa.aggregate([1.0, -2.0, 3.0], how)
        assert abs(got - want[how]) < 1e-12, f"aggregate {how}: expected {want[how]}, got {got}"

def test_aggregate_refuses_unknown_and_empty():
    with pytest.raises(ValueError):
        pa.aggregate([1.0], "median")
    with pytest.raises(ValueError):
        pa.aggregate([], "sum")

def test_cumsum():
    assert pa.cumsum([1.0, -2.0, 3.0]) == [1.0, -1.0, 2.0], "expected running totals [1, -1, 2]"

def test_attribution_predictors_disagree_on_hand_built_sequence():
    s = [0.0, 0.8, -0.2, -0.5, 0.3]  # cumsum [0, .8, .6, .1, .4]; drops [0, -.8, 1.0, .3, -.8]
    assert pa.argmin_cumsum(s) == 0, f"argmin of cumulative sum should be 0, got {pa.argmin_cumsum(s)}"
    assert pa.argmin_step(s) == 3, f"argmin step should be 3, got {pa.argmin_step(s)}"
    assert pa.sharpest_drop(s) == 2, f"sharpest drop (0.8 -> -0.2) should be 2, got {pa.sharpest_drop(s)}"

def test_argmin_cumsum_takes_first_index_on_ties():
    assert pa.argmin_cumsum([-1.0, 0.0, 0.0, 2.0]) == 0, "cumsum [-1, -1, -1, 1]: first minimum is step 0"

def test_sharpest_drop_at_step_zero_is_measured_from_zero():
    assert pa.sharpest_drop([-2.0, -1.0, -1.5]) == 0, "a drop 0 -> -2 at step 0 beats -1 -> -1.5"
    assert pa.sharpest_drop([0.5, 1.0, 0.2]) == 2, "a positive first step is no drop"

def test_attribution_metrics():
    acc, mae = pa.attribution_metrics([1, 2, 3, 4], [1, 2, 5, 0])
    assert (acc, mae) == (0.5, 1.5), f"expected accuracy 0.5 and MAE 1.5, got {(acc, mae)}"

# -----------------------------------------------------------------------------
# metrics

def brute_force_auroc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))

def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores, labels = rng.integers(0, 5, size=40), rng.integers(0, 2, size=40)
        got, want = pa.auroc(scores, labels), brute_force_auroc(scores, labels)
        assert abs(got - want) < 1e-12, f"auroc {got} != pairwise count {want}"

def test_auroc_extremes_and_empty_class():
    assert pa.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0, "perfect separation should give 1"
    assert pa.auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0, "reversed separation should give 0"
    assert pa.auroc([0.3, 0.3], [0, 1]) == 0.5, "a tie should count one half"
    assert math.isnan(pa.auroc([0.1, 0.2], [1, 1])), "no negatives should give nan"

def test_rankdata_averages_ties():
    assert list(pa.rankdata([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0], "ties should share the average rank"

def test_spearman_with_ties_matches_hand_computation():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: sum dx*dy = 4.5, sxx = 4.5, syy = 5
    got = pa.spearman([1, 2, 2, 3], [1, 3, 2, 4])
    assert abs(got - 4.5 / math.sqrt(4.5 * 5)) < 1e-12, f"expected 0.94868, got {got}"

def test_spearman_monotone_and_constant():
    x = np.linspace(-2, 2, 9)
    assert abs(pa.spearman(x, np.exp(x)) - 1) < 1e-12, "a monotone transform should give 1"
    assert abs(pa.spearman(x, -x ** 3) + 1) < 1e-12, "a decreasing transform should give -1"
    assert math.isnan(pa.spearman(x, np.ones(9))), "constant input should give nan"

def test_sign_agreement():
    got = pa.sign_agreement([1.0, -2.0, 0.5, 0.0], [3.0, -1.0, -0.1, 0.0])
    assert got == 0.75, f"3 of 4 signs agree (0 agrees with 0), got {got}"

def test_wilson_interval_contains_rate_and_stays_in_unit_interval():
    for k, n in [(0, 10), (3, 10), (10, 10), (1, 1), (50, 200)]:
        lo, hi = pa.wilson(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0, f"wilson({k}, {n}) = {(lo, hi)} should bracket {k / n} in [0, 1]"
    lo, hi = pa.wilson(8, 10)
    assert abs(lo - 0.4902) < 1e-4 and abs(hi - 0.9433) < 1e-4, f"wilson(8, 10) should be (0.4902, 0.9433)"

def test_bootstrap_ci_brackets_auroc_and_is_seeded():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=60)
    scores = labels + rng.normal(size=60)
    lo, hi = pa.bootstrap_ci((scores, labels), pa.auroc, n_boot=200, seed=0)
    point = pa.auroc(scores, labels)
    assert 0.0 <= lo <= point <= hi <= 1.0, f"interval {(lo, hi)} should contain the point estimate {point}"
    assert (lo, hi) == pa.bootstrap_ci((scores, labels), pa.auroc, n_boot=200, seed=0), "same seed, same interval"
