"""
tabular.py: does our PPO reach the optimum of its own objective where everything else is exact?

The RL stage is meant to solve  max_pi E[sum_t r_t - beta * log(pi/pi_ref)(a_t|s_t)],  whose optimum
pi* = pi_ref * exp((Q* - V*) / beta) makes PA the soft advantage (Proposition 1). This file takes the network,
the tokenizer and the world out of the question: train.py's PPO math (per-step KL in the reward, train.gae,
train.whiten, train.ppo_losses, Adam; without value clipping or gradient-norm clipping, which a table does not
need) on a tabular softmax policy in a small stochastic MDP whose pi* is solved exactly by pa.soft_value_iteration.
Each variant changes one thing, so the table shows which one matters. diagnose.py asks the same of the network.

    python tabular.py                       # the table of variants, 3 MDPs each (about 1.5 minutes)
    python tabular.py --set lam=1.0         # the table's recipe against one change (about 15 s)
"""
import argparse
import math
import sys
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

import pa
import train


def make_mdp(seed=0, S=8, A=4, p_end=0.25, rare=True):
    """A stochastic MDP with an absorbing terminal state (the last one), reached with probability >= p_end at
    every step, rewards in [0, 1] paid by actions, and a reference that often puts little mass on the best
    action (rare=True: one action per state gets 5% of the reference's mass), as in the shop, where pi* must
    lift actions the reference seldom takes. Returns P (S, A, S), R (S, A), pi_ref (S, A)."""
    rng = np.random.default_rng(seed)
    term = S - 1
    P = (1 - p_end) * rng.dirichlet(np.ones(S - 1) * 0.5, size=(S, A))
    P = np.concatenate([P, np.full((S, A, 1), p_end)], axis=2)
    P[term] = 0.0
    P[term, :, term] = 1.0
    R = rng.uniform(size=(S, A)) ** 3  # a few actions pay well, most little
    R[term] = 0.0
    pi_ref = rng.dirichlet(np.ones(A) * 2.0, size=S)
    if rare:
        best = R.argmax(axis=1)
        pi_ref[np.arange(S), best] = 0.0
        pi_ref = 0.95 * pi_ref / pi_ref.sum(axis=1, keepdims=True)
        pi_ref[np.arange(S), best] = 0.05
    return P, R, pi_ref


@dataclass
class Recipe:
    states: int = 8                # states of the MDP (the last one is the end): more = fewer visits to each
    iters: int = 100               # PPO iterations
    episodes: int = 64             # episodes per iteration
    beta: float = 0.1
    lr: float = 0.05               # Adam on the logits table (and the critic table)
    epochs: int = 2
    minibatch: int = 128           # steps per minibatch
    clip: float = 0.2
    lam: float = 0.95
    critic: str = "learned"        # learned (a value table fit to the GAE returns), exact (V^pi each iteration), or
                                   # mc: the mean KL-regularised return of mc_rollouts episodes from each visited
                                   # state, with lambda = 0 (train.py's --advantage=mc)
    mc_rollouts: int = 4
    consistency: float = 0.0       # weight of (beta * log pi/pi_ref(a|s) - (r + V(s') - V(s)))^2 on the sampled steps,
                                   # V the critic's values (train.py's --consistency)
    advantages: str = "gae"        # gae, or exact: beta * (log pi*/pi_ref - log pi/pi_ref), as few_tasks' runs
    kl: str = "sampled"            # sampled: -beta * log(pi/pi_ref)(a|s) in the reward; exact: -beta * KL(pi || pi_ref)
                                   # at the state in the reward and, differentiated, in the loss (train.py's --kl)
    target_kl: float = math.inf    # stop an iteration's epochs past this approx_kl (train.py: 0.05)
    anneal_lr: bool = False        # the learning rate falls linearly to 0 over the iterations (CleanRL's
                                   # default; train.py keeps it constant)
    average_from: int = -1         # from this iteration on, also keep the running mean of the logits and score it
                                   # (train.py's --average_from: iterate averaging); -1: none
    seed: int = 0


def policy_values(P, R, pi, pi_ref, beta, n_iters=200):
    """V^pi of the KL-regularised reward r - beta * log(pi/pi_ref), by iterating its Bellman equation."""
    r = R - beta * (np.log(pi) - np.log(pi_ref))
    V = np.zeros(P.shape[0])
    for _ in range(n_iters):
        V = (pi * (r + P @ V)).sum(axis=1)
    return V


def sample_episodes(P, pi, n, rng, max_len=60, start=None):
    """n episodes under pi, from state 0 or from the states in start (n = len(start)), stepped together:
    lists of (s, a)."""
    term, S = P.shape[0] - 1, P.shape[0]
    s = np.zeros(n, dtype=int) if start is None else np.array(start, dtype=int)
    out = [[] for _ in range(len(s))]
    for _ in range(max_len):
        live = np.flatnonzero(s != term)
        if not len(live):
            break
        a = (rng.random((len(live), 1)) > np.cumsum(pi[s[live]], axis=1)).sum(axis=1)
        a = np.minimum(a, pi.shape[1] - 1)
        nxt = (rng.random((len(live), 1)) > np.cumsum(P[s[live], a], axis=1)).sum(axis=1)
        for i, si, ai in zip(live, s[live], a):
            out[i].append((si, ai))
        s[live] = np.minimum(nxt, S - 1)
    return out


def run(P, R, pi_ref, rc):
    """Train a tabular policy from pi_ref with train.py's PPO math; returns the log of each iteration:
    the per-(s, a) log-ratio's Pearson correlation with pi*'s (weighted by pi*'s state-action visits),
    the objective's value V^pi(s0) against V*(s0), and the KL per episode. With rc.average_from >= 0, from that
    iteration on also corr_avg, value_avg and kl_avg: the same for the policy of the mean logits so far."""
    rng, gen = np.random.default_rng(rc.seed), torch.Generator().manual_seed(rc.seed)
    S, A = R.shape
    _, V_star, pi_star = pa.soft_value_iteration(P, R, pi_ref, rc.beta, n_iters=300)
    target = np.log(pi_star) - np.log(pi_ref)
    occ = pi_star * _occupancy(P, pi_star)[:, None]  # where pi* spends its time, per (s, a)
    logits = torch.tensor(np.log(pi_ref), requires_grad=True)
    values = torch.zeros(S, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits, values], lr=rc.lr)
    out, mean, n_avg = [], None, 0
    for it in range(rc.iters):
        if rc.anneal_lr:
            for g in opt.param_groups:
                g["lr"] = rc.lr * (1 - it / rc.iters)
        with torch.no_grad():
            pi = torch.softmax(logits, 1).numpy()
        eps = sample_episodes(P, pi, rc.episodes, rng)
        V_pi = policy_values(P, R, pi, pi_ref, rc.beta)
        lr_now = np.log(pi) - np.log(pi_ref)
        out.append(dict(iter=it, corr=_wcorr(lr_now, target, occ), value=V_pi[0], v_star=V_star[0],
                        kl=float(np.mean([sum(lr_now[s, a] for s, a in ep) for ep in eps]))))
        if 0 <= rc.average_from <= it:  # the running mean of the logits, this iteration's included
            n_avg += 1
            mean = logits.detach().clone() if mean is None else mean + (logits.detach() - mean) / n_avg
            pi_avg = torch.softmax(mean, 1).numpy()
            lr_avg = np.log(pi_avg) - np.log(pi_ref)
            out[-1].update(corr_avg=_wcorr(lr_avg, target, occ),
                           value_avg=policy_values(P, R, pi_avg, pi_ref, rc.beta)[0],
                           kl_avg=float(_occupancy(P, pi_avg) @ (pi_avg * lr_avg).sum(1)))  # exact, per episode
        mc = _mc_values(P, R, pi, lr_now, eps, rc, rng) if rc.critic == "mc" else None
        _update(rc, eps, R, lr_now, V_pi, logits, values, opt, gen, target, mc)
    return out


def _mc_values(P, R, pi, lr_now, eps, rc, rng):
    """[[V(s_t) per step] per episode]: the mean KL-regularised return of rc.mc_rollouts episodes of pi from each
    visited state, as agents.mc_state_values does for the network."""
    starts = [s for ep in eps for s, _ in ep for _ in range(rc.mc_rollouts)]
    G = [sum(R[s, a] - rc.beta * lr_now[s, a] for s, a in ep) for ep in sample_episodes(P, pi, 0, rng, start=starts)]
    G, k, out = np.reshape(G, (-1, rc.mc_rollouts)).mean(axis=1), 0, []
    for ep in eps:
        out.append(list(G[k:k + len(ep)]))
        k += len(ep)
    return out


def _update(rc, eps, R, lr_now, V_pi, logits, values, opt, gen, target, mc=None):
    """One PPO iteration on the episodes: rewards, GAE, whitening, clipped epochs, as train.ppo_update does.
    target: log pi*/pi_ref, for the exact advantages. mc: Monte Carlo state values (critic="mc")."""
    L = max(len(ep) for ep in eps)
    E = len(eps)
    r, rs, v, mask = (torch.zeros(E, L, dtype=torch.float64) for _ in range(4))
    state_kl = (torch.softmax(logits, 1).detach().numpy() * lr_now).sum(1)  # KL(pi || pi_ref) at each state
    log_ref = torch.log_softmax(logits, 1).detach() - torch.tensor(lr_now)  # log pi_ref, (S, A)
    s_idx, a_idx = torch.zeros(E, L, dtype=torch.long), torch.zeros(E, L, dtype=torch.long)
    for e, ep in enumerate(eps):
        for t, (s, a) in enumerate(ep):
            s_idx[e, t], a_idx[e, t], mask[e, t] = s, a, 1.0
            rs[e, t] = R[s, a]
            r[e, t] = R[s, a] - rc.beta * (state_kl[s] if rc.kl == "exact" else lr_now[s, a])  # as episode_tensors
            if rc.critic == "exact":
                v[e, t] = V_pi[s]
            elif rc.critic == "mc":
                v[e, t] = mc[e][t]
            else:
                v[e, t] = float(values[s].detach())
    adv, ret = train.gae(r, v, mask, 1.0, 0.0 if rc.critic == "mc" else rc.lam)
    if rc.advantages == "exact":
        adv = rc.beta * torch.tensor(target - lr_now)[s_idx, a_idx] * mask
    kl_coef = rc.beta * float(torch.rsqrt(adv[mask > 0].var() + 1e-8))  # kl="exact": as train.ppo_update scales it
    adv = train.whiten(adv, mask)
    old_lp = (torch.log_softmax(logits, 1)[s_idx, a_idx]).detach()
    ref_lp = old_lp - torch.tensor(lr_now)[s_idx, a_idx]
    v_next = torch.cat([v[:, 1:], torch.zeros(E, 1, dtype=v.dtype)], 1) * torch.cat([mask[:, 1:], mask[:, :1] * 0], 1)
    tgt = rs + v_next - v  # r_t + V(s_t+1) - V(s_t), the KL left out
    rows = mask.flatten() > 0
    flat = [x.flatten()[rows] for x in (s_idx, a_idx, old_lp, adv, ret, v, ref_lp, tgt)]
    n = int(rows.sum())
    for _ in range(rc.epochs):
        perm = torch.randperm(n, generator=gen)
        kls = []
        for start in range(0, n, rc.minibatch):
            mb = perm[start:start + rc.minibatch]
            s, a, mb_old, mb_adv, mb_ret, mb_v, mb_ref, mb_tgt = (x[mb] for x in flat)
            new_lp = torch.log_softmax(logits, 1)[s, a]
            one = torch.ones_like(new_lp)
            pg_loss, v_loss, d = train.ppo_losses(new_lp, mb_old, mb_adv, values[s], mb_v, mb_ret, one, rc.clip, 1e9)
            loss = pg_loss + (0.5 * v_loss if rc.critic == "learned" else 0.0)
            if rc.consistency:
                loss = loss + rc.consistency * ((rc.beta * (new_lp - mb_ref) - mb_tgt) ** 2).mean()
            if rc.kl == "exact":  # the KL at each visited state, differentiated there, as train.ppo_update does
                logp = torch.log_softmax(logits, 1)[s]
                loss = loss + kl_coef * (logp.exp() * (logp - log_ref[s])).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            kls.append(d["approx_kl"])
        if np.mean(kls) > rc.target_kl:
            break


def _occupancy(P, pi, n_iters=200):
    """Expected visits to each state from state 0 before the end, under pi."""
    term = P.shape[0] - 1
    d, total = np.eye(P.shape[0])[0], np.zeros(P.shape[0])
    for _ in range(n_iters):
        d[term] = 0.0
        total += d
        d = np.einsum("s,sa,sat->t", d, pi, P)
    return total


def _wcorr(x, y, w):
    w = w / w.sum()
    mx, my = (w * x).sum(), (w * y).sum()
    cov = (w * (x - mx) * (y - my)).sum()
    return float(cov / math.sqrt((w * (x - mx) ** 2).sum() * (w * (y - my) ** 2).sum()))


# one change each from the table's recipe: Recipe's defaults (train.py's PPO math with the sampled KL at beta 0.1)
# and train.py's target_kl. train.py's default, scaled to the table: --set kl=exact --set beta=0.2 --set episodes=21
# --set average_from=33
VARIANTS = {
    "the table's recipe": dict(target_kl=0.05),
    "no target_kl": dict(),
    "exact critic": dict(critic="exact"),
    "Monte Carlo values, 4 re-rollouts per state": dict(critic="mc"),
    "exact advantages of pi*": dict(advantages="exact"),
    "4x episodes": dict(episodes=256),
    "64 states (8x fewer visits each)": dict(states=64),
    "256 states (32x fewer visits each)": dict(states=256),
    "256 states, Monte Carlo values": dict(states=256, critic="mc"),
    "256 states, logits averaged from iteration 50 on": dict(states=256, average_from=50),
}


def parse_changes(sets, error):
    """--set KEY=VALUE strings -> a change on top of the table's recipe; error(message) on a bad key or value."""
    change, names = dict(target_kl=0.05), [f.name for f in fields(Recipe) if f.name != "seed"]
    for kv in sets:
        key, _, val = kv.partition("=")
        if key not in names:
            error(f"--set {kv!r}: valid keys: {', '.join(names)}")
        typ = type(getattr(Recipe(), key))
        try:
            if typ is bool and val.lower() not in ("1", "0", "true", "false"):
                raise ValueError
            change[key] = val.lower() in ("1", "true") if typ is bool else typ(val)
        except ValueError:
            error(f"--set {kv!r}: {val!r} is not a {typ.__name__}")
        at_least_0 = ("lam", "consistency", "average_from")
        if typ in (int, float) and key not in at_least_0 and not change[key] > (1 if key == "states" else 0):
            error(f"--set {kv!r}: must be above {1 if key == 'states' else 0}")
        if key in at_least_0 and change[key] < 0:
            error(f"--set {kv!r}: must be at least 0")
        choices = {"critic": ("learned", "exact", "mc"), "advantages": ("gae", "exact"), "kl": ("sampled", "exact")}.get(key)
        if choices and val not in choices:
            error(f"--set {kv!r}: valid: {', '.join(choices)}")
    return change


def main(argv):
    p = argparse.ArgumentParser(description="train.py's PPO math against the exact optimum, in tabular MDPs.")
    p.add_argument("--seeds", type=int, default=3, help="MDPs (and training seeds) per variant")
    p.add_argument("--iters", type=int, default=100, help="PPO iterations per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="compare the table's recipe with "
                   "this change only (repeatable), e.g. --set lam=1.0 --set clip=0.05")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.iters < 1:
        p.error("--seeds and --iters must be at least 1")
    variants = VARIANTS
    if args.set:
        variants = {"the table's recipe": VARIANTS["the table's recipe"],
                    "with " + ", ".join(args.set): parse_changes(args.set, p.error)}
    print("| variant | corr(log pi/pi_ref, log pi*/pi_ref) at 25% / 100% of iterations | V^pi(s0) / V*(s0) | KL nats/episode |")
    print("|---|---:|---:|---:|")
    for name, change in variants.items():
        c25, c100, val, kl = [], [], [], []
        for seed in range(args.seeds):
            rc = replace(Recipe(iters=args.iters, seed=seed), **change)
            P, R, pi_ref = make_mdp(seed, S=rc.states)
            log = run(P, R, pi_ref, rc)
            c25.append(log[len(log) // 4].get("corr_avg", log[len(log) // 4]["corr"]))  # the mean where it is kept
            c100.append(log[-1].get("corr_avg", log[-1]["corr"]))
            val.append(log[-1].get("value_avg", log[-1]["value"]) / log[-1]["v_star"])
            kl.append(log[-1].get("kl_avg", log[-1]["kl"]))
        print(f"| {name} | {np.mean(c25):+.2f} / {np.mean(c100):+.2f} | {np.mean(val):.3f} | {np.mean(kl):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
