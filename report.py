"""
report.py: the evaluation table. Reference vs PPO, best-of-N and beam search by every step scorer,
failure prediction (AUROC), failure attribution and fidelity to the oracle's A*, on the test split with
its seen and unseen halves apart, intervals on every rate.

Protocol, fixed before looking at test results: every choice (the trajectory aggregation of each
selector, the beam width) is made on the VALIDATION split; the test split is only measured.

    python search.py --ckpt out/ppo.pt         # (train.py calls run() at the end of a run)
"""
import json
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

import envs
import model as M
import pa
import search as S


@dataclass
class ReportConfig:
    n_valid: int = 200          # validation tasks (choices are made here)
    n_test: int = 500           # test tasks for greedy success and failure prediction (odd ids: unseen half)
    n_bon: int = 500            # test tasks for best-of-N, attribution and step fidelity (the first n_bon)
    n_samples: int = 16         # sampled trajectories per task for best-of-N
    ns: tuple = (1, 2, 4, 8, 16)
    beam_budget: int = 4        # candidates per step B * K, compared with best-of-N at N = budget
    n_beam: int = 500           # test tasks for beam search
    n_beam_valid: int = 200     # validation tasks on which the beam shape (B, K) is chosen
    n_mc: int = 40              # test tasks for the (costly) Monte Carlo selector
    mc_rollouts: int = 4        # rollouts per state for the Monte Carlo estimate
    mc_samples: int = 8         # trajectories per task for Monte Carlo best-of-N
    n_fidelity: int = 100       # test tasks whose greedy states are used for top-1 agreement
    first_k: tuple = (1, 2, 3)  # failure prediction from the first k steps only
    seed: int = 0


# The report that `python train.py` prints at the end of a CPU run: every section, on fewer tasks where
# the work is sampling (about 5 minutes on 2 cores instead of about 15). The full one: search.py --ckpt.
QUICK = dict(n_valid=100, n_bon=120, n_beam=100, n_beam_valid=50, n_mc=20, mc_samples=4, mc_rollouts=2, n_fidelity=50)


def rate(xs):
    """Mean of 0/1 outcomes with a 95% Wilson interval."""
    n, k = len(xs), int(sum(xs))
    lo, hi = pa.wilson(k, n)
    return dict(rate=k / max(n, 1), lo=lo, hi=hi, n=n)


def halves(eps_or_groups, unseen_of):
    """Split into all / seen / unseen by the task's unseen flag."""
    return {"all": eps_or_groups, "seen": [e for e in eps_or_groups if not unseen_of(e)],
            "unseen": [e for e in eps_or_groups if unseen_of(e)]}


def outcome(episodes):
    out = {}
    for h, eps in halves(episodes, lambda e: e.unseen).items():
        out[h] = dict(success=rate([e.success for e in eps]),
                      score=float(np.mean([e.reward for e in eps])) if eps else math.nan)
    return out


def paired_gain(before, after, unseen_of=lambda e: e.unseen):
    """after - before in success rate over the SAME tasks (episodes in the same task order), per half, with
    a 95% paired bootstrap interval: tasks are resampled, both outcomes of a task travel together, so
    the interval reflects the difference, not the two rates' separate spreads."""
    assert [e.task for e in before] == [e.task for e in after], "paired episodes must be of the same tasks"
    out = {}
    for h, idx in halves(list(range(len(before))), lambda i: unseen_of(before[i])).items():
        d = np.array([float(after[i].success) - float(before[i].success) for i in idx])
        lo, hi = pa.bootstrap_ci(d, np.mean) if len(d) else (math.nan, math.nan)
        out[h] = dict(diff=float(d.mean()) if len(d) else math.nan, lo=lo, hi=hi, n=len(d))
    return out


def choose_how(metric):
    """The aggregation with the best validation metric (ties: the order of pa.AGGREGATIONS)."""
    scores = {how: metric(how) for how in pa.AGGREGATIONS}
    return max(pa.AGGREGATIONS, key=lambda h: (-1 if math.isnan(scores[h]) else scores[h])), scores


def attribution_steps(ep, delta=envs.DELTA):
    """The oracle's first critical mistake of a recorded episode (its A* per step), or None."""
    for t, s in enumerate(ep.steps):
        if s.qstar - s.vstar < -delta:
            return t
    return None


def fidelity_top1(agent, states, beta):
    """At each state, score EVERY available action and check whether each scorer's favourite is an
    optimal action (Q* within 1e-9 of V*). Returns {selector: top-1 agreement}."""
    prompts, actions, owner = [], [], []
    for i, env in enumerate(states):
        p = agent.encode(env.obs())
        for a in env.actions():
            prompts.append(p)
            actions.append(M.encode_action(agent.enc, a))
            owner.append((i, a))
    rows = agent.score(prompts, actions)
    per_state = [[] for _ in states]
    for (i, a), p, act, row in zip(owner, prompts, actions, rows):
        per_state[i].append(S.Step(p, act, a, **row))
    rng, out = random.Random(0), {}
    for sel in ("pa", "logprob", "logprob_mean", "ref_logprob", "confidence", "entropy", "random"):
        hits = []
        for env, cands in zip(states, per_state):
            sc = [S.step_scores(S.Episode(0, 0, False, [c]), sel, beta, rng)[0] for c in cands]
            best = cands[int(np.argmax(sc))].text
            q = env.optimal_q()
            hits.append(q[best] >= max(q.values()) - 1e-9)
        out[sel] = float(np.mean(hits))
    out["oracle"] = 1.0
    return out


def run(ppo_path, out_dir, ref_path=None, device="auto", batch_size=256, rc=None, timings=None):
    """Write the evaluation report of a PPO checkpoint (and its reference) to out_dir."""
    rc = rc or ReportConfig()
    t_start = time.time()
    ppo_agent, env_name, ref_path, device = S.load_agent(ppo_path, ref_path, device, batch_size)
    ref_agent = S.Agent(ppo_agent.ref, ppo_agent.ref, ppo_agent.enc, ppo_agent.beta, ppo_agent.temperature,
                        ppo_agent.max_action_tokens, batch_size)
    beta = ppo_agent.beta
    gen = torch.Generator(device=device).manual_seed(rc.seed)
    test, valid = list(range(rc.n_test)), list(range(rc.n_valid))
    R, cost = {"env": env_name, "beta": beta, "config": {k: v for k, v in vars(rc).items()}}, {}

    def episodes(agent, split, tasks, seeds, greedy=False, keep_states=False):
        return S.rollout(agent, S.make_envs(env_name, split, tasks, seeds), greedy, gen, oracle=True,
                         keep_states=keep_states)

    # 1. reference, PPO and the oracle's own policy on the test split
    t0 = time.time()
    ref_g = episodes(ref_agent, "test", test, [0], greedy=True)
    ref_s = episodes(ref_agent, "test", test, [0])  # one sample per test task
    ppo_g = episodes(ppo_agent, "test", test, [0], greedy=True)
    ppo_s = episodes(ppo_agent, "test", test, [0])
    samples = episodes(ppo_agent, "test", test[:rc.n_bon], range(rc.n_samples))
    groups = [samples[i * rc.n_samples:(i + 1) * rc.n_samples] for i in range(rc.n_bon)]
    oracle_eps = []
    for env in S.make_envs(env_name, "test", test, [0]):
        env.reset()
        ep = S.Episode(env.task_id, env.seed, env.unseen)
        while not env.done:
            _, ep.reward, _, _ = env.step(envs.expert_action(env))
        oracle_eps.append(ep)
    for k, greedy, sampled in (("reference", ref_g, ref_s), ("ppo", ppo_g, ppo_s),
                               ("oracle", oracle_eps, oracle_eps)):
        g = outcome(greedy)
        R[k] = dict(success=g["all"]["success"]["rate"], score=g["all"]["score"], greedy=g, sampled=outcome(sampled))
    R["ppo_minus_reference"] = dict(greedy=paired_gain(ref_g, ppo_g), sampled=paired_gain(ref_s, ppo_s))
    R["oracle"]["v_star_s0"] = float(np.mean([e.steps[0].vstar for e in ppo_g]))
    cost["rollouts_s"] = round(time.time() - t0, 1)
    print(f"[report] rollouts done in {cost['rollouts_s']}s")

    # 2. validation: every selector's aggregation, for best-of-8 and for failure prediction
    t0 = time.time()
    v_samples = episodes(ppo_agent, "valid", valid, range(8))
    v_groups = [v_samples[i * 8:(i + 1) * 8] for i in range(len(valid))]
    v_greedy = episodes(ppo_agent, "valid", valid, [0], greedy=True)
    rng = random.Random(rc.seed)
    sels = [s for s in S.SELECTORS if s != "mc"]
    how_bon, how_auroc, R["validation"] = {}, {}, {}
    for sel in sels:
        def bon8(how):
            sc = [[S.trajectory_score(e, sel, how, beta, rng) for e in g] for g in v_groups]
            return S.best_of_n(v_groups, sc, [8])[0][8]

        def auc(how):
            return pa.auroc([S.trajectory_score(e, sel, how, beta, rng) for e in v_greedy],
                            [e.success for e in v_greedy])
        how_bon[sel], bon_scores = choose_how(bon8)
        how_auroc[sel], auc_scores = choose_how(auc)
        R["validation"][sel] = dict(bon8=bon_scores, auroc=auc_scores, how_bon=how_bon[sel],
                                    how_auroc=how_auroc[sel])
    cost["validation_s"] = round(time.time() - t0, 1)

    # 3. best-of-N on test, each selector with its validation-chosen aggregation
    R["bon"], R["bon_halves"], R["cost"] = {}, {}, {}
    for sel in sels:
        t0 = time.time()
        sc = [[S.trajectory_score(e, sel, how_bon[sel], beta, rng) for e in g] for g in groups]
        R["cost"][sel] = dict(score_s=round(time.time() - t0, 3))
        for h, idx in halves(list(range(len(groups))), lambda i: test[i] % 2 == 1).items():
            sel_rate, mean_n, pass_n = S.best_of_n([groups[i] for i in idx], [sc[i] for i in idx], rc.ns)
            R["bon_halves"].setdefault(sel, {})[h] = {str(n): v for n, v in sel_rate.items()}
            if h == "all":
                R["bon"][sel] = {str(n): v for n, v in sel_rate.items()}
                R["mean_at_n"] = {str(n): v for n, v in mean_n.items()}
                R["pass_at_n"] = {str(n): v for n, v in pass_n.items()}
    steps_per_ep = float(np.mean([len(e.steps) for e in samples]))
    for sel in sels:  # extra forward passes per trajectory beyond sampling it
        R["cost"][sel]["extra_forward_per_traj"] = steps_per_ep if sel == "pa" or sel == "ref_logprob" else 0.0
    R["cost"]["oracle"]["note"] = "exact dynamic programming over environment states: not available in practice"

    # 4. failure prediction (AUROC, Spearman) on the PPO policy's greedy test trajectories
    R["auroc"], R["auroc_ci"], R["auroc_first_k"], R["spearman_outcome"] = {}, {}, {}, {}
    labels = [e.success for e in ppo_g]
    for sel in sels:
        if sel == "oracle":
            x = [pa.aggregate(S.step_scores(e, sel, beta), how_auroc[sel]) for e in ppo_g]
        else:
            x = [S.trajectory_score(e, sel, how_auroc[sel], beta, rng) for e in ppo_g]
        R["auroc"][sel] = pa.auroc(x, labels)
        R["auroc_ci"][sel] = pa.bootstrap_ci((np.array(x), np.array(labels, dtype=float)), pa.auroc, n_boot=300)
        R["spearman_outcome"][sel] = pa.spearman(x, [e.reward for e in ppo_g])
        R["auroc_first_k"][sel] = {
            str(k): pa.auroc([pa.aggregate(S.step_scores(e, sel, beta, rng)[:k], how_auroc[sel]) for e in ppo_g],
                             labels) for k in rc.first_k}
    R["n_failures_greedy"] = int(len(labels) - sum(labels))

    # 5. failure attribution on failed sampled trajectories that have a first critical mistake
    failed = [e for g in groups for e in g[:4] if not e.success]
    labelled = [(e, attribution_steps(e)) for e in failed]
    labelled = [(e, t) for e, t in labelled if t is not None]
    R["attribution"], R["attribution_predictors"] = {}, {}
    for sel in sels:
        preds = [pa.argmin_cumsum(S.step_scores(e, sel, beta, rng)) for e, _ in labelled]
        acc, mae = pa.attribution_metrics(preds, [t for _, t in labelled])
        R["attribution"][sel] = dict(accuracy=acc, mae=mae, n=len(labelled))
    for name in ("argmin_cumsum", "argmin_step", "sharpest_drop"):
        fn = getattr(pa, name)
        acc, mae = pa.attribution_metrics([fn(S.step_scores(e, "pa", beta)) for e, _ in labelled],
                                          [t for _, t in labelled])
        R["attribution_predictors"][name] = dict(accuracy=acc, mae=mae)
    R["attribution_counts"] = dict(failed=len(failed), with_critical_mistake=len(labelled))

    # 6. fidelity to A*: step scores along sampled trajectories, and top-1 over all candidates of a state
    steps_eps = [g[0] for g in groups]
    astar = [s.qstar - s.vstar for e in steps_eps for s in e.steps]
    R["fidelity"] = {}
    for sel in sels:
        x = [v for e in steps_eps for v in S.step_scores(e, sel, beta, rng)]
        R["fidelity"][sel] = dict(spearman=pa.spearman(x, astar), sign=pa.sign_agreement(x, astar))
    states = [s.env for e in episodes(ppo_agent, "test", test[:rc.n_fidelity], [0], greedy=True, keep_states=True)
              for s in e.steps]
    for sel, t1 in fidelity_top1(ppo_agent, states, beta).items():
        R["fidelity"].setdefault(sel, {})["top1"] = t1
    R["fidelity"]["value_td"]["top1"] = None  # needs the action executed: not a pre-action scorer

    # 7. Monte Carlo value estimates (costly: a subset of the test tasks)
    t0 = time.time()
    mc_tasks = test[:rc.n_mc]
    mc_groups = [g[:rc.mc_samples] for g in groups[:rc.n_mc]]
    mc_eps = [e for g in mc_groups for e in g]
    for e in mc_eps:  # re-run the recorded actions on clones to get the states back (cheap, exact)
        env = envs.make_env(env_name, "test", e.task, e.seed)
        env.reset()
        for s in e.steps:
            s.env = env.clone()
            env.step(s.text)
    fp0 = ppo_agent.forward_passes
    mcv = S.mc_state_values(ppo_agent, mc_eps, rc.mc_rollouts, gen)
    mc_fp = ppo_agent.forward_passes - fp0
    k, mc_sc = 0, []
    for g in mc_groups:
        mc_sc.append([pa.aggregate(S.step_scores(e, "mc", beta, mc_values=mcv[k + j]), "sum")
                      for j, e in enumerate(g)])
        k += len(g)
    pa_sc = [[S.trajectory_score(e, "pa", how_bon["pa"], beta) for e in g] for g in mc_groups]
    ns = [n for n in rc.ns if n <= rc.mc_samples]
    R["bon"]["mc"] = {str(n): v for n, v in S.best_of_n(mc_groups, mc_sc, ns)[0].items()}
    R["mc_subset"] = dict(tasks=len(mc_tasks), pa={str(n): v for n, v in S.best_of_n(mc_groups, pa_sc, ns)[0].items()},
                          pass_at_n={str(n): v for n, v in S.best_of_n(mc_groups, mc_sc, ns)[2].items()})
    mc_x = [v for j, e in enumerate(mc_eps) for v in S.step_scores(e, "mc", beta, mc_values=mcv[j])]
    mc_a = [s.qstar - s.vstar for e in mc_eps for s in e.steps]
    R["fidelity"]["mc"] = dict(spearman=pa.spearman(mc_x, mc_a), sign=pa.sign_agreement(mc_x, mc_a), top1=None)
    R["cost"]["mc"] = dict(score_s=round(time.time() - t0, 1),
                           extra_forward_per_traj=mc_fp / max(len(mc_eps), 1))
    for e in samples:
        for s in e.steps:
            s.env = None

    # 8. beam search at matched compute: B beams x K candidates = the best-of-N budget
    t0 = time.time()
    grid = [(b, rc.beam_budget // b) for b in (1, 2, 4, 8) if rc.beam_budget % b == 0]
    vb = {}
    for B, K in grid:
        best, _ = S.beam_search(ppo_agent, S.make_envs(env_name, "valid", valid[:rc.n_beam_valid], [0]), B, K, "pa",
                                gen, rng)
        vb[f"{B}x{K}"] = float(np.mean([b.success for b in best]))
    B, K = max(grid, key=lambda g: vb[f"{g[0]}x{g[1]}"])
    R["beam_choice"] = dict(B=B, K=K, valid=vb)
    R["beam"] = {}
    for sel in S.BEAM_SELECTORS:
        fp0 = ppo_agent.forward_passes
        roots = S.make_envs(env_name, "test", test[:rc.n_beam], [0])
        best, executed = S.beam_search(ppo_agent, roots, B, K, sel, gen, rng)
        succ = [b.success for b in best]
        R["beam"][sel] = dict(success=float(np.mean(succ)), ci=rate(succ), B=B, K=K,
                              forward_passes=(ppo_agent.forward_passes - fp0) / len(roots),
                              env_steps=executed / len(roots),
                              halves={h: float(np.mean([b.success for b, t in v])) for h, v in halves(
                                  list(zip(best, test)), lambda x: x[1] % 2 == 1).items()})
    # forward passes of best-of-N at the same N, for the matched-compute comparison
    fp_sample = float(np.mean([sum(len(s.action) for s in e.steps) for e in samples]))
    R["bon_forward_passes"] = {str(n): n * (fp_sample + steps_per_ep) for n in rc.ns}
    cost["beam_s"] = round(time.time() - t0, 1)
    cost["total_s"] = round(time.time() - t_start, 1)
    R["timings"] = {**(timings or {}), **cost}
    write(R, out_dir)
    return R


def fmt(x):
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}"


def table(R):
    """The evaluation table as markdown lines (also printed)."""
    L = [f"## {R['env']}: test split ({R['config']['n_test']} tasks; seen / unseen halves), success % [95% CI]", "",
         "| policy | greedy | seen | unseen | sampled (1 per task) | score (greedy) |", "|---|---:|---:|---:|---:|---:|"]
    for k in ("reference", "ppo", "oracle"):
        g = R[k]["greedy"]
        s = R[k].get("sampled", g)
        c = g["all"]["success"]
        L.append(f"| {k} | {fmt(c['rate'])} [{fmt(c['lo'])}, {fmt(c['hi'])}] | {fmt(g['seen']['success']['rate'])} "
                 f"| {fmt(g['unseen']['success']['rate'])} | {fmt(s['all']['success']['rate'])} "
                 f"| {fmt(g['all']['score'])} |")
    L += ["", "PPO minus reference, success points on the same test tasks [95% paired bootstrap CI]", "",
          "| policies run | all | seen | unseen |", "|---|---:|---:|---:|"]
    for mode, g in R["ppo_minus_reference"].items():
        L.append(f"| {mode} | " + " | ".join(f"{100 * g[h]['diff']:+5.1f} [{100 * g[h]['lo']:+5.1f}, "
                                             f"{100 * g[h]['hi']:+5.1f}]" for h in ("all", "seen", "unseen")) + " |")
    ns = list(R["pass_at_n"])
    L += ["", f"Best-of-N success % (PPO policy, first {R['config']['n_bon']} test tasks; aggregation chosen on "
              f"validation; mc: first {R['mc_subset']['tasks']} tasks, N <= {R['config']['mc_samples']})", "",
          "| selector | agg | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|---|" + "---:|" * len(ns)]
    for sel, row in R["bon"].items():
        how = "outcome" if sel == "oracle" else R["validation"].get(sel, {}).get("how_bon", "sum")
        L.append(f"| {sel} | {how} | " + " | ".join(fmt(row.get(n)) for n in ns) + " |")
    L.append("| Mean@N | | " + " | ".join(fmt(R["mean_at_n"][n]) for n in ns) + " |")
    L.append("| Pass@N | | " + " | ".join(fmt(R["pass_at_n"][n]) for n in ns) + " |")
    bc = R["beam_choice"]
    L += ["", f"Beam search (B={bc['B']}, K={bc['K']}, chosen on validation) vs best-of-{bc['B'] * bc['K']}", "",
          "| selector | beam success | fwd passes / task | best-of-N success | fwd passes / task |", "|---|---:|---:|---:|---:|"]
    n = str(bc["B"] * bc["K"])
    for sel, b in R["beam"].items():
        L.append(f"| {sel} | {fmt(b['success'])} | {b['forward_passes']:.0f} | {fmt(R['bon'].get(sel, {}).get(n))} "
                 f"| {R['bon_forward_passes'][n]:.0f} |")
    L += ["", f"Failure prediction on greedy PPO test trajectories ({R['n_failures_greedy']} failures) and "
              f"attribution ({R['attribution_counts']['with_critical_mistake']} failed samples with a critical mistake)", "",
          "| selector | AUROC [95% CI] | AUROC first 1/2/3 steps | attribution acc | MAE | Spearman(step, A*) | sign | top-1 |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for sel in R["auroc"]:
        ci, fk, at, fi = R["auroc_ci"][sel], R["auroc_first_k"][sel], R["attribution"][sel], R["fidelity"][sel]
        L.append(f"| {sel} | {fmt(R['auroc'][sel])} [{fmt(ci[0])}, {fmt(ci[1])}] | "
                 + "/".join(fmt(v).strip() for v in fk.values())
                 + f" | {fmt(at['accuracy'])} | {at['mae']:.2f} | {fmt(fi['spearman'])} | {fmt(fi['sign'])} "
                   f"| {fmt(fi.get('top1'))} |")
    f = R["fidelity"]["mc"]
    L.append(f"| mc (subset) | | | | | {fmt(f['spearman'])} | {fmt(f['sign'])} | |")
    return L


def write(R, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    lines = table(R)
    print("\n".join(lines))
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(R, f, indent=1, default=float)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out_dir}/report.json and report.md")
