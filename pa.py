"""
Progress advantage (PA) and everything we compare it with, as a page of math.

    PA(s, a) = beta * log( pi_theta(a|s) / pi_ref(a|s) )     (Oh et al. 2026, arXiv 2606.26080)

summed over the tokens of one agent action. Proposition 1: after KL-regularised RL the optimal policy
is pi* = pi_ref * exp((Q* - V*) / beta), so PA of pi* is exactly the soft optimal advantage Q* - V*.

The file holds pure functions only, in three groups:
  1. step scorers on (B, T) per-token records (torch in, torch out, fp32 or wider),
  2. trajectory aggregations and failure-attribution predictors (lists of floats in),
  3. metrics (AUROC, Spearman, intervals) and a tabular soft value iteration (numpy / floats).
Masks are named after what 1 means: action_mask is 1 on tokens the policy produced (action tokens,
including the stop token) and 0 on prompt, observation and padding tokens.

Tests: the pa.py section of test_pa.py (python -m pytest -q test_pa.py)
"""
import math

import numpy as np
import torch

# -----------------------------------------------------------------------------
# 1. step scorers: one score per row of a (B, T) batch of prompt+action records

def _fp32(x):
    # RL math runs in fp32 whatever the model's dtype; float64 inputs (tests, DP) stay float64.
    return x.to(torch.promote_types(x.dtype, torch.float32))

def _masked_sum(x, action_mask):
    x = _fp32(x)
    return (x * action_mask.to(x.dtype)).sum(dim=-1)

def progress_advantage(logprobs, ref_logprobs, action_mask, beta):
    """Progress advantage of each row's action.
    PA = beta * sum_t action_mask_t * (logprobs_t - ref_logprobs_t)  (Prop. 1: = Q* - V* at the optimum)
    logprobs, ref_logprobs: (B, T) per-token log-probs of the same tokens under pi_theta and pi_ref,
    same temperature; action_mask: (B, T), 1 on action tokens. Returns (B,)."""
    return beta * _masked_sum(_fp32(logprobs) - _fp32(ref_logprobs), action_mask)

def logprob_sum(logprobs, action_mask):
    """Policy log-probability of the action: sum_t action_mask_t * logprobs_t. (B, T) -> (B,)"""
    return _masked_sum(logprobs, action_mask)

def logprob_mean(logprobs, action_mask):
    """Length-normalised log-probability: sum_t mask_t * logprobs_t / sum_t mask_t. (B, T) -> (B,)
    A row with no action tokens scores 0 rather than nan."""
    n = action_mask.to(_fp32(logprobs).dtype).sum(dim=-1).clamp(min=1)
    return _masked_sum(logprobs, action_mask) / n

def ref_logprob_sum(ref_logprobs, action_mask):
    """Reference log-probability of the action: sum_t action_mask_t * ref_logprobs_t. (B, T) -> (B,)"""
    return _masked_sum(ref_logprobs, action_mask)

def confidence(topk_logprobs, action_mask):
    """Self-certainty as in DeepConf, averaged over action tokens.
    token confidence c_t = -(1/k) * sum_j topk_logprobs[t, j];  score = sum_t mask_t * c_t / sum_t mask_t
    Sign: c_t >= 0 and HIGHER = more confident. A peaked distribution puts its tail of the top k at very
    negative log-probs (large c_t); a flat one over V tokens gives c_t = log V.
    topk_logprobs: (B, T, k) the k largest log-probs of the distribution that produced token t;
    action_mask: (B, T), 1 on action tokens. Returns (B,); a row with no action tokens scores 0."""
    c = -_fp32(topk_logprobs).mean(dim=-1)  # (B, T)
    n = action_mask.to(c.dtype).sum(dim=-1).clamp(min=1)
    return _masked_sum(c, action_mask) / n

def value_td(rewards, v_before, v_after):
    """The critic's score of an action ("value after minus value before"): r + V(s') - V(s).
    Any matching shapes, elementwise. With v_after = 0 after the episode's last step it is the TD error of a
    terminal step (steps left are part of the state, so running out of steps is terminal too); search.py's
    selector passes r = 0 and, there, the critic's value of the last action instead (search._value_td)."""
    return _fp32(rewards) + _fp32(v_after) - _fp32(v_before)

def merge_weights(ref_state, policy_state, alpha):
    """A reference between the two checkpoints, weight by weight: ref + alpha * (policy - ref).
    alpha = 0 is the reference, 1 the policy (the paper's merged references; it found alpha 0.2-0.7 stable).
    Two state_dicts with the same keys -> a new state_dict; non-float tensors (none in our GPT) are the ref's."""
    if ref_state.keys() != policy_state.keys():
        raise ValueError("merge_weights needs two state_dicts of the same model")
    return {k: r + alpha * (policy_state[k] - r) if r.is_floating_point() else r.clone()
            for k, r in ref_state.items()}

def implicit_prm_loss(seq_log_ratio, labels, beta):
    """The implicit PRM's training loss (Yuan et al. 2024, "Free Process Rewards without Process Labels"):
    cross-entropy of the outcome label against sigmoid(r), r = beta * log(pi_phi / pi_ref) of the whole
    trajectory. Its step score is then beta * log(pi_phi / pi_ref) of one action, and the steps sum to r.
    seq_log_ratio: (E,) summed log-ratio of each trajectory; labels: (E,) 1 = success. -> scalar mean loss"""
    r = beta * _fp32(seq_log_ratio)
    return torch.nn.functional.binary_cross_entropy_with_logits(r, labels.to(r.dtype))

# -----------------------------------------------------------------------------
# 2. trajectories: aggregate step scores, predict the decisive mistake

AGGREGATIONS = ("sum", "mean", "min", "last")

def aggregate(step_scores, how="sum"):
    """One trajectory score from its step scores: sum, mean, min or last (the paper's aggregations of step
    PA for best-of-N). With PA, "sum" = return - V*(s0) + zero-mean transition noise. step_scores: list of floats -> float"""
    s = np.asarray(step_scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("aggregate needs at least one step score")
    if how == "sum":
        return float(s.sum())
    if how == "mean":
        return float(s.mean())
    if how == "min":
        return float(s.min())
    if how == "last":
        return float(s[-1])
    raise ValueError(f"unknown aggregation {how!r}, expected one of {AGGREGATIONS}")

def cumsum(step_scores):
    """Running totals: out[t] = sum_{i<=t} step_scores[i]. list of T floats -> list of T floats"""
    return np.cumsum(np.asarray(step_scores, dtype=np.float64)).tolist()

def argmin_cumsum(step_scores):
    """The paper's attribution: argmin_t sum_{i<=t} step_scores[i], the step where progress bottoms out.
    Returns an int; the first such step on ties."""
    return int(np.argmin(cumsum(step_scores)))  # np.argmin keeps the first minimum

def argmin_step(step_scores):
    """Attribution by the single worst step: argmin_t step_scores[t] (first on ties). -> int"""
    return int(np.argmin(np.asarray(step_scores, dtype=np.float64)))

def sharpest_drop(step_scores):
    """Attribution by the largest fall from one step score to the next: argmax_t (s_{t-1} - s_t).
    For step 0 we take s_{-1} = 0: an advantage of 0 means "no progress, no harm", so a negative first
    step counts as a drop from neutral and a step-0 mistake can still be found. First index on ties."""
    return int(np.argmin(monitor_scores(step_scores, "drop")))  # s_t - s_{t-1}, its most negative

MONITORS = ("sum", "last", "drop")

def monitor_scores(step_scores, how="sum"):
    """The halting monitor's running score after each step, from the step scores seen so far: "sum" = the
    running sum (progress so far), "last" = the step's own score, "drop" = s_t - s_{t-1} with s_{-1} = 0 (a
    fall is negative). The agent hands over at the first step whose score is below a threshold.
    list of T floats -> list of T floats"""
    s = np.asarray(step_scores, dtype=np.float64)
    if how == "sum":
        return cumsum(s)
    if how == "last":
        return s.tolist()
    if how == "drop":
        return (s - np.concatenate([[0.0], s[:-1]])).tolist()
    raise ValueError(f"unknown monitor {how!r}, expected one of {MONITORS}")

def first_below(scores, threshold):
    """The first index whose score is below threshold, or None (the monitor never fires)."""
    return next((t for t, x in enumerate(scores) if x < threshold), None)

def attribution_metrics(pred_steps, true_steps):
    """Exact-step accuracy mean(pred == true) and mean absolute error mean|pred - true| (in steps).
    Two equal-length lists of ints -> (accuracy, mae); (nan, nan) when empty."""
    p, t = np.asarray(pred_steps), np.asarray(true_steps)
    if p.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(p == t)), float(np.mean(np.abs(p - t)))

# -----------------------------------------------------------------------------
# 3. metrics

def rankdata(x):
    """Ranks 1..n with ties given their average rank, in O(n log n). array of n -> float array of n"""
    vals, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    end = np.cumsum(counts)  # the 1-based rank of the last member of each tie group
    return (end - (counts - 1) / 2.0)[inverse.reshape(-1)]

def auroc(scores, labels):
    """Area under the ROC curve: P(score of a success > score of a failure), ties counting one half.
    Via the Mann-Whitney U statistic: AUROC = (sum of positive ranks - n1 (n1 + 1) / 2) / (n1 n0).
    labels: 1 (True) = success = the positive class. Returns a float, nan if either class is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[labels].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))

def spearman(x, y):
    """Spearman rank correlation: Pearson correlation of the average ranks of x and of y.
    Returns a float, nan if either input is constant or has fewer than 2 elements."""
    rx, ry = rankdata(x).astype(np.float64), rankdata(y).astype(np.float64)
    if rx.size < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum()))

def sign_agreement(x, y):
    """Fraction of pairs with the same sign: mean(sign(x) == sign(y)); 0 only agrees with 0.
    Used to ask whether a step score says "helped" / "hurt" when the oracle's A* does. nan when empty."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size == 0:
        return float("nan")
    return float(np.mean(np.sign(x) == np.sign(y)))

def wilson(successes, n, z=1.96):
    """Wilson score interval for a rate k/n (95% at z = 1.96); stays inside [0, 1] even at k = 0 or n.
    center = (p + z^2/2n) / (1 + z^2/n),  half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
    Returns (lo, hi); (0.0, 1.0) when n = 0 (nothing is known)."""
    if n == 0:
        return 0.0, 1.0
    p, d = successes / n, 1 + z * z / n
    center = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, center - half), min(1.0, center + half)

def bootstrap_ci(values, fn, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap interval of a statistic fn over resampled items.
    values: one array (fn(sample) is called) or a TUPLE of equal-length arrays resampled together, e.g.
    bootstrap_ci((scores, labels), auroc). Resamples where fn is nan (say, one class only) are dropped.
    Returns (lo, hi) floats."""
    arrays = [np.asarray(v) for v in values] if isinstance(values, tuple) else [np.asarray(values)]
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        stats.append(fn(*[a[idx] for a in arrays]))
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))

# -----------------------------------------------------------------------------
# soft value iteration on a tabular MDP: the ground truth behind Proposition 1

def soft_value_iteration(P, R, pi_ref, beta, gamma=1.0, n_iters=200):
    """Optimal values of  max_pi E[ sum_t gamma^t (r_t - beta * log(pi/pi_ref)(a_t|s_t)) ].
    Q(s,a) = R(s,a) + gamma * sum_s' P(s'|s,a) V(s')
    V(s)   = beta * log sum_a pi_ref(a|s) exp(Q(s,a)/beta)        (soft Bellman backup)
    pi*(a|s) = pi_ref(a|s) * exp((Q(s,a) - V(s)) / beta)           (Proposition 1)
    P: (S, A, S) transition probabilities, R: (S, A) expected rewards, pi_ref: (S, A) rows summing to 1.
    n_iters backups from V = 0 solve the n_iters-step problem; with an absorbing terminal state (self-loop,
    reward 0, so its V stays 0) reached with probability 1, they converge to the stationary solution.
    Returns numpy float64 (Q (S, A), V (S,), pi_star (S, A))."""
    P, R, pi_ref = (np.asarray(a, dtype=np.float64) for a in (P, R, pi_ref))
    assert n_iters >= 1, "need at least one backup"
    V = np.zeros(P.shape[0])
    for _ in range(n_iters):
        Q = R + gamma * P @ V  # (S, A)
        m = Q.max(axis=1)  # subtract the max before exp: a small beta would otherwise overflow
        V = m + beta * np.log((pi_ref * np.exp((Q - m[:, None]) / beta)).sum(axis=1))
    pi_star = pi_ref * np.exp((Q - V[:, None]) / beta)
    return Q, V, pi_star
