"""
checks.py: two looks at a trained run on the VALIDATION split only, for tuning and for diagnosis without
touching the test split (report.py measures the test split):

    python search.py --ckpt out/ppo.pt --valid        # success, best-of-8 by several scorers, PA vs A*
    python search.py --ckpt out/ppo.pt --optimum 8    # PPO against the exact optimum of its own objective
"""
import json
import math
import os
import random
import time

import numpy as np
import torch

import envs
import model as M
import pa
import search as S
from report import fmt


def validation_check(ppo_path, out_dir, ref_path=None, device="auto", batch_size=256, n=200, n_bon=100, seed=0):
    """A quick look at a run on the VALIDATION split only, for tuning without touching the test split:
    greedy and one-sample success of the reference and the PPO policy on n tasks, best-of-8 by a few step
    scorers under each aggregation on the first n_bon tasks (with Mean@8 and Pass@8), and the rank
    correlation of each sampled step's PA with the oracle's A* (all steps, and the steps where A* != 0).
    Writes validation.json to out_dir and returns it."""
    agent, env_name, ref_path, device = S.load_agent(ppo_path, ref_path, device, batch_size)
    ref = S.Agent(agent.ref, agent.ref, agent.enc, agent.beta, agent.temperature, agent.max_action_tokens, batch_size)
    gen, rng, tasks = torch.Generator(device=device).manual_seed(seed), random.Random(seed), list(range(n))

    def episodes(a, tasks, seeds, greedy):
        return S.rollout(a, S.make_envs(env_name, "valid", tasks, seeds), greedy, gen, oracle=True)
    V = {"env": env_name, "beta": agent.beta, "n": n, "n_bon": n_bon}
    for name, a in (("reference", ref), ("ppo", agent)):
        g, s = episodes(a, tasks, [0], True), episodes(a, tasks, [0], False)
        V[name] = dict(greedy=float(np.mean([e.success for e in g])), sampled=float(np.mean([e.success for e in s])),
                       invalid_greedy=float(np.mean([not st.valid for e in g for st in e.steps])))
    samples = episodes(agent, tasks[:n_bon], range(8), False)
    groups = [samples[i * 8:(i + 1) * 8] for i in range(n_bon)]
    V["bon8"] = {sel: {how: S.best_of_n(groups, [[S.trajectory_score(e, sel, how, agent.beta, rng) for e in g]
                                                 for g in groups], [8])[0][8] for how in pa.AGGREGATIONS}
                 for sel in ("pa", "logprob", "value_td", "random", "oracle")}
    V["mean_at_8"] = float(np.mean([e.success for e in samples]))
    V["pass_at_8"] = float(np.mean([any(e.success for e in g) for g in groups]))
    p = np.array([x for e in samples for x in S.step_scores(e, "pa", agent.beta)])
    o = np.array([x for e in samples for x in S.step_scores(e, "oracle", agent.beta)])
    nz = np.abs(o) > 1e-9
    V["spearman_pa_astar"] = dict(all=pa.spearman(p, o), nonzero=pa.spearman(p[nz], o[nz]) if nz.sum() > 1 else None,
                                  steps=len(p), nonzero_steps=int(nz.sum()))
    print(f"[validation] {env_name}, {n} tasks | greedy: reference {fmt(V['reference']['greedy'])}, "
          f"ppo {fmt(V['ppo']['greedy'])} | sampled: reference {fmt(V['reference']['sampled'])}, "
          f"ppo {fmt(V['ppo']['sampled'])}")
    print(f"[validation] best-of-8 on {n_bon} tasks (Mean@8 {fmt(V['mean_at_8'])}, Pass@8 {fmt(V['pass_at_8'])}): "
          + "; ".join(f"{sel} " + "/".join(fmt(v).strip() for v in row.values()) for sel, row in V["bon8"].items())
          + f"  ({'/'.join(pa.AGGREGATIONS)})")
    sp = V["spearman_pa_astar"]
    print(f"[validation] Spearman(PA, A*) over {sp['steps']} sampled steps: {sp['all']:+.3f}; "
          f"where A* != 0 ({sp['nonzero_steps']} steps): " + (f"{sp['nonzero']:+.3f}" if sp["nonzero"] is not None else "-"))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "validation.json"), "w") as f:
        json.dump(V, f, indent=1, default=float)
    return V


def optimum_check(ppo_path, out_dir, ref_path=None, device="auto", batch_size=256, n=8, n_samples=8, seed=0,
                  max_steps=None):
    """How far is PPO from the optimum of its own objective? On n validation tasks, solve the KL-regularised
    objective exactly (envs.SoftSolution over every state reachable from the start, pi_ref = the reference
    network's probability of each action's text, the rest of its mass on the no-op) and measure:
      - the optimum's success probability, expected reward and KL(pi* || pi_ref) per episode, and the
        reference's own success probability (exact: a check of the solver against sampled success);
      - at every step of n_samples PPO samples per task: PPO's log-ratio log pi/pi_ref against the optimum's
        log pi*/pi_ref = (Q - V) / beta for the same action (Pearson and Spearman);
      - PA of the optimum (beta times its log-ratio: the soft advantage) as a process reward on those samples,
        next to PPO's PA: Spearman with the hard A*, and AUROC of the trajectory sum for success.
    Writes optimum.json to out_dir and returns it. Costly: every reachable state is scored by the reference
    (a shop task has 5,000-12,000; max_steps, the episode budget, shrinks the tree for tests)."""
    agent, env_name, ref_path, device = S.load_agent(ppo_path, ref_path, device, batch_size)
    beta, gen = agent.beta, torch.Generator(device=device).manual_seed(seed)

    def ref_probs(batch):
        prompts, actions = [], []
        for prompt, acts in batch:
            p = agent.encode(prompt)
            prompts += [p] * len(acts)
            actions += [M.encode_action(agent.enc, a) for a in acts]
        rows = agent.score(prompts, actions, ("ref",))
        probs, k = [], 0
        for _, acts in batch:
            probs.append({a: math.exp(float(rows[k + j]["ref_logprobs"].sum())) for j, a in enumerate(acts)})
            k += len(acts)
        return probs

    T, steps, trajs = [], dict(ppo=[], opt=[], astar=[]), dict(ppo=[], opt=[], success=[])
    for task in range(n):
        t0, env = time.time(), envs.make_env(env_name, "valid", task=task, seed=0, max_steps=max_steps)
        sol = env.soft_solution(ref_probs, beta)
        s0 = env.state
        opt_s, opt_r, opt_kl = sol.expect(s0)
        T.append(dict(task=task, states=len(sol.states), v_soft=sol.v(s0), v_star=env.optimal_value(),
                      opt_success=opt_s, opt_reward=opt_r, opt_kl=opt_kl, identity_err=beta * opt_kl - (opt_r - sol.v(s0)),
                      ref_success=sol.expect(s0, optimal=False)[0], seconds=round(time.time() - t0, 1)))
        samples = [envs.make_env(env_name, "valid", task=task, seed=s, max_steps=max_steps) for s in range(n_samples)]
        for ep in S.rollout(agent, samples, False, gen, oracle=True, keep_states=True):
            ppo = [float((st.logprobs - st.ref_logprobs).sum()) for st in ep.steps]
            opt = [sol.log_ratio(st.env.state, st.text) for st in ep.steps]
            steps["ppo"] += ppo
            steps["opt"] += opt
            steps["astar"] += [st.qstar - st.vstar for st in ep.steps]
            trajs["ppo"].append(beta * sum(ppo))
            trajs["opt"].append(beta * sum(opt))
            trajs["success"].append(ep.success)
        print(f"[optimum] task {task}: {len(sol.states)} states, pi* succeeds {fmt(opt_s)}% with KL {opt_kl:.2f} "
              f"nats/episode, pi_ref {fmt(T[-1]['ref_success'])}% ({T[-1]['seconds']} s)")
    p, o, a = (np.array(steps[k]) for k in ("ppo", "opt", "astar"))
    O = {"env": env_name, "beta": beta, "n": n, "n_samples": n_samples, "tasks": T,
         "optimum": {k: float(np.mean([t[k] for t in T])) for k in ("opt_success", "opt_reward", "opt_kl",
                                                                      "ref_success", "v_soft", "v_star")},
         "max_identity_err": float(max(abs(t["identity_err"]) for t in T)),
         "ppo": dict(sampled_success=float(np.mean(trajs["success"])), kl=float(np.mean(trajs["ppo"])) / beta),
         "log_ratio": dict(pearson=float(np.corrcoef(p, o)[0, 1]) if p.std() > 0 and o.std() > 0 else math.nan,
                           spearman=pa.spearman(p, o), steps=len(p)),  # nan: a constant side (no reward reachable)
         "pa_vs_astar": dict(ppo=pa.spearman(p, a), optimum=pa.spearman(o, a)),
         "auroc": dict(ppo=pa.auroc(trajs["ppo"], trajs["success"]), optimum=pa.auroc(trajs["opt"], trajs["success"]))}
    m = O["optimum"]
    print(f"[optimum] {n} validation tasks, beta {beta}: pi* succeeds {fmt(m['opt_success'])}% "
          f"(KL {m['opt_kl']:.2f} nats/episode), pi_ref {fmt(m['ref_success'])}%; PPO samples "
          f"{fmt(O['ppo']['sampled_success'])}% (KL {O['ppo']['kl']:.2f})")
    print(f"[optimum] PPO's log-ratio vs the optimum's on {len(p)} steps: Pearson {O['log_ratio']['pearson']:+.3f}, "
          f"Spearman {O['log_ratio']['spearman']:+.3f} | Spearman with A*: PPO's PA {O['pa_vs_astar']['ppo']:+.3f}, "
          f"the optimum's {O['pa_vs_astar']['optimum']:+.3f} | failure AUROC: PPO's PA {O['auroc']['ppo']:.3f}, "
          f"the optimum's {O['auroc']['optimum']:.3f}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "optimum.json"), "w") as f:
        json.dump(O, f, indent=1, default=float)
    return O
