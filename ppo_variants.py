"""
ppo_variants.py: PPO's variants beside train.py's default (GAE over the policy's own value head): other advantage
estimators, a path-consistency target and a critic network of its own. Each is a train.py flag that was measured
against the default on the optimum check (LOG.md) and none became the default; they live here so that train.py
reads as the default recipe.

    --advantage=rloo        rloo_advantages: each episode's return less its task's other episodes' mean, no critic
    --advantage=mc          mc_advantages: values of the visited states from re-rollouts (agents.mc_state_values)
    --consistency=W         consistency_targets: beta * log pi/pi_ref(a|s) regressed onto r + V(s') - V(s)
    --critic=separate       separate_critic, critic_values: a copy of the reference network as the critic
"""
import itertools

import numpy as np
import torch

import model as M


def rloo_advantages(episodes, returns):
    """Leave-one-out advantages, no critic: each episode's whole KL-regularised return R (returns[e]: the sum of
    its per-token rewards as train.episode_tensors lays them out, so the penalty is the sampled log-ratio or, with
    --kl=exact, the exact KL), less the mean R of the OTHER episodes of the same task (consecutive episodes with
    equal task ids), put on every step. An episode alone with its task gets R less the batch mean."""
    out = []
    for _, group in itertools.groupby(zip(episodes, returns), key=lambda er: er[0].task):
        group = list(group)
        total, n = sum(r for _, r in group), len(group)
        out += [[r - ((total - r) / (n - 1) if n > 1 else float(np.mean(returns)))] * len(ep.steps) for ep, r in group]
    return out

def mc_advantages(episodes, values, beta):
    """Per-token advantages from Monte Carlo state values (--advantage=mc), no critic. values[e][t] estimates
    V(s_t), the KL-regularised return from step t's state (agents.mc_state_values with beta). Token i of step t:
        A = r_t - beta * sum_{j >= i} log(pi/pi_ref)(token j of step t) + V(s_{t+1}) - V(s_t)
    with V = 0 after the last step: the step's own reward and KL penalty from this token on, then the value of
    where the step led, less the value of where it started. Returns [[(k,) tensor per step] per episode]."""
    out = []
    for ep, vs in zip(episodes, values):
        rows = []
        for t, s in enumerate(ep.steps):
            kl_to_go = (s.logprobs - s.ref_logprobs).flip(0).cumsum(0).flip(0)
            v_next = vs[t + 1] if t + 1 < len(ep.steps) else 0.0
            rows.append(s.reward - beta * kl_to_go + v_next - vs[t])
        out.append(rows)
    return out

def consistency_targets(episodes):
    """[[r_t + V(s_{t+1}) - V(s_t) per step] per episode], V the critic's value of the step's state (values[0]),
    0 after the last step. At the optimum of the KL-regularised objective, beta * log pi*/pi_ref(a|s) equals
    this in expectation (Proposition 1), and along any episode the targets sum to its reward less V(s_0): the
    property PA needs to predict an outcome. --consistency regresses beta * log pi/pi_ref onto them."""
    values = [[float(s.values[0]) for s in ep.steps] for ep in episodes]
    return [[float(a[0]) for a in rows] for rows in mc_advantages(episodes, values, 0.0)]  # beta 0: no KL term

def separate_critic(cfg, ref):
    """(critic, its optimizer) for --critic=separate: the reference network again, its value head the critic,
    trained on its own (saved as ppo.pt's "critic"; the policy's own head stays the reference's, and that is what
    the report's value-TD scorer reads). (None, None) for the default shared critic."""
    if cfg.critic != "separate":
        return None, None
    critic = M.copy_net(ref)
    return critic, torch.optim.AdamW(critic.parameters(), lr=cfg.ppo_lr, eps=cfg.adam_eps, weight_decay=0.0)

def critic_values(critic, agent, episodes):
    """Replace each step's values (the policy's own head's, read during the rollout) with the separate critic's,
    teacher-forced on the same (prompt, action) rows by Agent.score."""
    steps = [s for ep in episodes for s in ep.steps]
    rows = agent.like(critic.eval(), agent.ref).score([s.prompt for s in steps], [s.action for s in steps],
                                                      ("policy",), [s.choices for s in steps])
    for s, row in zip(steps, rows):
        s.values = row["values"]
    critic.train()
