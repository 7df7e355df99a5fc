"""
report.py: the evaluation of a trained run. The report (run): reference vs PPO, best-of-N and beam search by
every step scorer, failure prediction (AUROC), failure attribution and fidelity to the oracle's A*, on the
test split with its seen and unseen halves apart, intervals on every rate. The checks, on the VALIDATION
split only, for tuning and diagnosis: validation_check (success, best-of-8 and failure AUROC by several
scorers, PA vs A*) and optimum_check (PPO against the exact optimum of its own KL-regularised objective).

Protocol, fixed before looking at test results: every choice (the trajectory aggregation of each
selector, the beam width) is made on the VALIDATION split; the test split is only measured.

    python report.py --ckpt out/ppo_avg.pt               # the full report (train.py runs the quick one on a CPU)
    python report.py --ckpt out/ppo_avg.pt --quick       # the quick report: fewer tasks where it samples
    python report.py --ckpt out/ppo_avg.pt --valid       # the validation check (about three minutes on a 2-core CPU)
    python report.py --ckpt out/ppo_avg.pt --optimum 8   # PPO against the exact optimum on 8 validation tasks
    python report.py --ckpt out/ppo_avg.pt --optimum 16 --ratio_scales 1,2   # ... and the policy moved along
                                                     # its own log-ratio, exactly (--ratio_scale S: acting so)
"""
import json
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np

import agents
import checkpoint
import envs
import model as M
import optimum
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
    gap: bool = True            # score "pa_gap" too: every step's available actions scored by both networks,
                                # about a third more time
    seed: int = 0


# The report that `python train.py` prints at the end of a CPU run: every section, on fewer tasks where
# the work is sampling, and without "pa_gap", which scores every available action at every step (report.py
# --valid scores it). The full one: report.py --ckpt.
QUICK = dict(n_valid=100, n_bon=120, n_beam=100, n_beam_valid=50, n_mc=20, mc_samples=4, mc_rollouts=2, n_fidelity=50,
             gap=False)


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
    if [e.task for e in before] != [e.task for e in after]:
        raise ValueError("paired episodes must be of the same tasks, in the same order")
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
    per_state = agents.score_actions(agent, states)
    rng, out = random.Random(0), {}
    for sel in [s for s, x in S.SELECTORS.items() if x.before_acting and s != "oracle"]:
        hits = []
        for env, cands in zip(states, per_state):
            sc = [S.step_scores(agents.Episode(0, 0, False, [c]), sel, beta, rng)[0] for c in cands]
            best = cands[int(np.argmax(sc))].text
            q = env.optimal_q()
            hits.append(q[best] >= max(q.values()) - 1e-9)
        out[sel] = float(np.mean(hits))
    out["oracle"] = 1.0
    return out


def run(ppo_path, out_dir, ref_path=None, device="auto", batch_size=256, rc=None, timings=None, pa_ref=None,
        ratio_scale=1.0):
    """Write the evaluation report of a PPO checkpoint (and its reference) to out_dir. Every section below
    fills its part of the report R; they run in this order, which fixes each one's random draws.
    pa_ref: another checkpoint as PA's reference; ratio_scale: the policy moved along its log-ratio (both:
    agents.load_run); the report names them."""
    rc = rc or ReportConfig()
    t_start = time.time()
    run_ = agents.load_run(ppo_path, ref_path, device, batch_size, rc.seed, pa_ref, ratio_scale)
    run_.gap = rc.gap
    R = {"env": run_.env_name, "beta": run_.ppo.beta, "config": {k: v for k, v in vars(rc).items()},
         "pa_ref": os.path.basename(pa_ref) if pa_ref else "ref.pt", "ratio_scale": ratio_scale}
    test, valid = list(range(rc.n_test)), list(range(rc.n_valid))
    cost, t0 = {}, time.time()
    eps = policies_section(R, run_, rc, test)
    cost["rollouts_s"] = round(time.time() - t0, 1)
    print(f"[report] rollouts done in {cost['rollouts_s']}s")
    t0, rng = time.time(), random.Random(rc.seed)
    how_bon, how_auroc = validation_section(R, run_, valid, rng)
    cost["validation_s"] = round(time.time() - t0, 1)
    best_of_n_section(R, rc, eps, how_bon, rng, test)
    failure_section(R, rc, eps["ppo_g"], how_auroc, rng)
    attribution_section(R, eps["groups"], run_.ppo.beta, rng)
    fidelity_section(R, run_, rc, eps["groups"], rng, test)
    monte_carlo_section(R, run_, rc, eps, how_bon["pa"], test)
    t0 = time.time()
    beam_section(R, run_, rc, eps["samples"], rng, test, valid)
    cost["beam_s"] = round(time.time() - t0, 1)
    cost["total_s"] = round(time.time() - t_start, 1)
    R["timings"] = {**(timings or {}), **cost}
    write(R, out_dir)
    return R


def policies_section(R, run_, rc, test):
    """1. The reference, PPO and the oracle's own policy on the test split: greedy, and one sample per task;
    n_samples samples per task of the first n_bon tasks for the sections that select among samples."""
    ref_g = run_.episodes(run_.ref, "test", test, [0], greedy=True)
    ref_s = run_.episodes(run_.ref, "test", test, [0])  # one sample per test task
    ppo_g = run_.episodes(run_.ppo, "test", test, [0], greedy=True)
    ppo_s = run_.episodes(run_.ppo, "test", test, [0], read=False)  # success only: no step scorer reads it
    samples = run_.episodes(run_.ppo, "test", test[:rc.n_bon], range(rc.n_samples))
    groups = [samples[i * rc.n_samples:(i + 1) * rc.n_samples] for i in range(rc.n_bon)]
    oracle_eps = []
    for env in agents.make_envs(run_.env_name, "test", test, [0]):
        env.reset()
        ep = agents.Episode(env.task_id, env.seed, env.unseen)
        while not env.done:
            _, ep.reward, _, _ = env.step(envs.expert_action(env))
        oracle_eps.append(ep)
    for k, greedy, sampled in (("reference", ref_g, ref_s), ("ppo", ppo_g, ppo_s),
                               ("oracle", oracle_eps, oracle_eps)):
        g = outcome(greedy)
        R[k] = dict(success=g["all"]["success"]["rate"], score=g["all"]["score"], greedy=g, sampled=outcome(sampled))
    R["ppo_minus_reference"] = dict(greedy=paired_gain(ref_g, ppo_g), sampled=paired_gain(ref_s, ppo_s))
    R["oracle"]["v_star_s0"] = float(np.mean([e.steps[0].vstar for e in ppo_g]))
    return dict(ppo_g=ppo_g, samples=samples, groups=groups)


def _selectors(R):
    """Monte Carlo is costly: its own section, on a subset; "pa_gap" only where the report reads it (rc.gap)."""
    return [s for s in S.SELECTORS if s != "mc" and (s != "pa_gap" or R["config"]["gap"])]


def validation_section(R, run_, valid, rng):
    """2. On the VALIDATION split, each selector's aggregation (sum, mean, min, last) for best-of-8 and for
    failure prediction. Returns the two choices {selector: how}."""
    beta = run_.ppo.beta
    v_samples = run_.episodes(run_.ppo, "valid", valid, range(8))
    v_groups = [v_samples[i * 8:(i + 1) * 8] for i in range(len(valid))]
    v_greedy = run_.episodes(run_.ppo, "valid", valid, [0], greedy=True)
    how_bon, how_auroc, R["validation"] = {}, {}, {}
    for sel in _selectors(R):
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
    return how_bon, how_auroc


def best_of_n_section(R, rc, eps, how_bon, rng, test):
    """3. Best-of-N on the test samples, each selector with its validation-chosen aggregation, per half;
    with Mean@N, Pass@N and the cost of each selector."""
    groups, beta = eps["groups"], R["beta"]
    R["bon"], R["bon_halves"], R["cost"] = {}, {}, {}
    for sel in _selectors(R):
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
    steps_per_ep = float(np.mean([len(e.steps) for e in eps["samples"]]))
    invalid_per_ep = float(np.mean([sum(not st.valid for st in e.steps) for e in eps["samples"]]))
    read_cost = {"pa_noop": 2 * invalid_per_ep, "pa_gap": 2 * steps_per_ep}  # a prompt per state and network
    for sel in _selectors(R):  # extra forward passes per trajectory beyond sampling it
        R["cost"][sel]["extra_forward_per_traj"] = ((steps_per_ep if S.SELECTORS[sel].needs_ref else 0.0)
                                                    + read_cost.get(sel, 0.0))
    R["cost"]["oracle"]["note"] = "exact dynamic programming over environment states: not available in practice"


def failure_section(R, rc, ppo_g, how_auroc, rng):
    """4. Failure prediction (AUROC with a bootstrap interval, from the first k steps too; Spearman with the
    reward) on the PPO policy's greedy test trajectories."""
    beta = R["beta"]
    R["auroc"], R["auroc_ci"], R["auroc_first_k"], R["spearman_outcome"] = {}, {}, {}, {}
    labels = [e.success for e in ppo_g]
    for sel in _selectors(R):
        if sel == "oracle":  # the sum of A*, not the outcome itself
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


def attribution_section(R, groups, beta, rng):
    """5. Failure attribution (argmin of the cumulative step score) on failed sampled trajectories that have
    a first critical mistake; and the three attribution rules applied to PA."""
    failed = [e for g in groups for e in g[:4] if not e.success]
    labelled = [(e, attribution_steps(e)) for e in failed]
    labelled = [(e, t) for e, t in labelled if t is not None]
    R["attribution"], R["attribution_predictors"] = {}, {}
    for sel in _selectors(R):
        preds = [pa.argmin_cumsum(S.step_scores(e, sel, beta, rng)) for e, _ in labelled]
        acc, mae = pa.attribution_metrics(preds, [t for _, t in labelled])
        R["attribution"][sel] = dict(accuracy=acc, mae=mae, n=len(labelled))
    for name in ("argmin_cumsum", "argmin_step", "sharpest_drop"):
        fn = getattr(pa, name)
        acc, mae = pa.attribution_metrics([fn(S.step_scores(e, "pa", beta)) for e, _ in labelled],
                                          [t for _, t in labelled])
        R["attribution_predictors"][name] = dict(accuracy=acc, mae=mae)
    R["attribution_counts"] = dict(failed=len(failed), with_critical_mistake=len(labelled))


def fidelity_section(R, run_, rc, groups, rng, test):
    """6. Fidelity to A*: step scores along sampled trajectories (Spearman, sign agreement), and top-1 over
    every candidate action of the states of greedy episodes."""
    beta = R["beta"]
    steps_eps = [g[0] for g in groups]
    astar = [s.qstar - s.vstar for e in steps_eps for s in e.steps]
    R["fidelity"] = {}
    for sel in _selectors(R):
        x = [v for e in steps_eps for v in S.step_scores(e, sel, beta, rng)]
        R["fidelity"][sel] = dict(spearman=pa.spearman(x, astar), sign=pa.sign_agreement(x, astar))
    states = [s.env for e in run_.episodes(run_.ppo, "test", test[:rc.n_fidelity], [0], greedy=True,
                                           keep_states=True, read=False) for s in e.steps]
    for sel, t1 in fidelity_top1(run_.ppo, states, beta).items():
        R["fidelity"].setdefault(sel, {})["top1"] = t1
    R["fidelity"]["value_td"]["top1"] = None  # needs the action executed: not a pre-action scorer


def monte_carlo_section(R, run_, rc, eps, how_pa, test):
    """7. Monte Carlo value estimates (costly: mc_rollouts rollouts from every state of the first
    mc_samples samples of the first n_mc test tasks): best-of-N by them, and their fidelity to A*."""
    beta, agent, t0 = R["beta"], run_.ppo, time.time()
    mc_groups = [g[:rc.mc_samples] for g in eps["groups"][:rc.n_mc]]
    mc_eps = [e for g in mc_groups for e in g]
    for e in mc_eps:  # re-run the recorded actions on clones to get the states back (cheap, exact)
        env = envs.make_env(run_.env_name, "test", e.task, e.seed)
        env.reset()
        for s in e.steps:
            s.env = env.clone()
            env.step(s.text)
    fp0 = agent.forward_passes
    mcv = agents.mc_state_values(agent, mc_eps, rc.mc_rollouts, run_.gen)
    mc_fp = agent.forward_passes - fp0
    k, mc_sc = 0, []
    for g in mc_groups:
        mc_sc.append([pa.aggregate(S.step_scores(e, "mc", beta, mc_values=mcv[k + j]), "sum")
                      for j, e in enumerate(g)])
        k += len(g)
    pa_sc = [[S.trajectory_score(e, "pa", how_pa, beta) for e in g] for g in mc_groups]
    ns = [n for n in rc.ns if n <= rc.mc_samples]
    R["bon"]["mc"] = {str(n): v for n, v in S.best_of_n(mc_groups, mc_sc, ns)[0].items()}
    R["mc_subset"] = dict(tasks=len(test[:rc.n_mc]),
                          pa={str(n): v for n, v in S.best_of_n(mc_groups, pa_sc, ns)[0].items()},
                          pass_at_n={str(n): v for n, v in S.best_of_n(mc_groups, mc_sc, ns)[2].items()})
    mc_x = [v for j, e in enumerate(mc_eps) for v in S.step_scores(e, "mc", beta, mc_values=mcv[j])]
    mc_a = [s.qstar - s.vstar for e in mc_eps for s in e.steps]
    R["fidelity"]["mc"] = dict(spearman=pa.spearman(mc_x, mc_a), sign=pa.sign_agreement(mc_x, mc_a), top1=None)
    R["cost"]["mc"] = dict(score_s=round(time.time() - t0, 1), extra_forward_per_traj=mc_fp / max(len(mc_eps), 1))
    for e in eps["samples"]:
        for s in e.steps:
            s.env = None


def beam_section(R, run_, rc, samples, rng, test, valid):
    """8. Step-level beam search at matched compute (B beams x K candidates = the best-of-N budget), its
    shape (B, K) chosen on validation with PA; every beam selector on the test tasks."""
    agent, env_name = run_.ppo, run_.env_name
    grid = [(b, rc.beam_budget // b) for b in (1, 2, 4, 8) if rc.beam_budget % b == 0]
    vb = {}
    for B, K in grid:
        best, _ = S.beam_search(agent, agents.make_envs(env_name, "valid", valid[:rc.n_beam_valid], [0]), B, K, "pa",
                                run_.gen, rng)
        vb[f"{B}x{K}"] = float(np.mean([b.success for b in best]))
    B, K = max(grid, key=lambda g: vb[f"{g[0]}x{g[1]}"])
    R["beam_choice"] = dict(B=B, K=K, valid=vb)
    R["beam"] = {}
    for sel in S.BEAM_SELECTORS:
        fp0 = agent.forward_passes
        roots = agents.make_envs(env_name, "test", test[:rc.n_beam], [0])
        best, executed = S.beam_search(agent, roots, B, K, sel, run_.gen, rng)
        succ = [b.success for b in best]
        R["beam"][sel] = dict(success=float(np.mean(succ)), ci=rate(succ), B=B, K=K,
                              forward_passes=(agent.forward_passes - fp0) / len(roots),
                              env_steps=executed / len(roots),
                              halves={h: float(np.mean([b.success for b, t in v])) for h, v in halves(
                                  list(zip(best, test)), lambda x: x[1] % 2 == 1).items()})
    # forward passes of best-of-N at the same N, for the matched-compute comparison
    steps_per_ep = float(np.mean([len(e.steps) for e in samples]))
    fp_sample = float(np.mean([sum(len(s.action) for s in e.steps) for e in samples]))
    R["bon_forward_passes"] = {str(n): n * (fp_sample + steps_per_ep) for n in rc.ns}


# -----------------------------------------------------------------------------
# the validation-only checks (for tuning and diagnosis without touching the test split)

def validation_check(ppo_path, out_dir, ref_path=None, device="auto", batch_size=256, n=200, n_bon=100, seed=0,
                     ratio_scale=1.0):
    """A quick look at a run on the VALIDATION split only, for tuning without touching the test split:
    greedy and one-sample success of the reference and the PPO policy on n tasks, best-of-8 by a few step
    scorers under each aggregation on the first n_bon tasks (with Mean@8 and Pass@8), and the rank
    correlation of each sampled step's PA with the oracle's A* (all steps, and the steps where A* != 0).
    Writes validation.json to out_dir and returns it. ratio_scale: as for agents.load_run."""
    run_ = agents.load_run(ppo_path, ref_path, device, batch_size, seed, ratio_scale=ratio_scale)
    run_.gap = True  # 200 greedy and 800 sampled episodes: "pa_gap" is worth its cost here
    agent, env_name, rng, tasks = run_.ppo, run_.env_name, random.Random(seed), list(range(n))
    V = {"env": env_name, "beta": agent.beta, "n": n, "n_bon": n_bon}
    for name, a in (("reference", run_.ref), ("ppo", agent)):
        g, s = run_.episodes(a, "valid", tasks, [0], True), run_.episodes(a, "valid", tasks, [0], False, read=False)
        V[name] = dict(greedy=float(np.mean([e.success for e in g])), sampled=float(np.mean([e.success for e in s])),
                       invalid_greedy=float(np.mean([not st.valid for e in g for st in e.steps])))
    sels = ("pa", "pa_noop", "pa_gap", "logprob", "value_td", "random", "oracle")
    V["auroc"] = {sel: {how: pa.auroc([S.trajectory_score(e, sel, how, agent.beta, rng) for e in g],
                                      [e.success for e in g]) for how in pa.AGGREGATIONS}
                  for sel in sels[:-1]}  # failure prediction on PPO's greedy episodes (the last g)
    samples = run_.episodes(agent, "valid", tasks[:n_bon], range(8))
    groups = [samples[i * 8:(i + 1) * 8] for i in range(n_bon)]
    V["bon8"] = {sel: {how: S.best_of_n(groups, [[S.trajectory_score(e, sel, how, agent.beta, rng) for e in g]
                                                 for g in groups], [8])[0][8] for how in pa.AGGREGATIONS}
                 for sel in sels}
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
    print(f"[validation] failure AUROC on PPO's {n} greedy episodes: "
          + "; ".join(f"{sel} " + "/".join(fmt(v).strip() for v in row.values()) for sel, row in V["auroc"].items())
          + f"  ({'/'.join(pa.AGGREGATIONS)})")
    sp = V["spearman_pa_astar"]
    print(f"[validation] Spearman(PA, A*) over {sp['steps']} sampled steps: {sp['all']:+.3f}; "
          f"where A* != 0 ({sp['nonzero_steps']} steps): " + (f"{sp['nonzero']:+.3f}" if sp["nonzero"] is not None else "-"))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "validation.json"), "w") as f:
        json.dump(V, f, indent=1, default=float)
    return V


# -----------------------------------------------------------------------------
# the tables

def fmt(x):
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}"


def table(R):
    """The evaluation table as markdown lines (also printed)."""
    L = [f"## {R['env']}: test split ({R['config']['n_test']} tasks; seen / unseen halves), success % [95% CI]", "",
         *([f"PA's reference: {R['pa_ref']} (not the RL stage's ref.pt)", ""] if R.get("pa_ref", "ref.pt") != "ref.pt" else []),
         *([f"PPO acts as its policy moved {R['ratio_scale']:g} times along its log-ratio (--ratio_scale)", ""]
           if R.get("ratio_scale", 1.0) != 1.0 else []),
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


def check_tasks(parser, flag, n, split):
    """Refuse (argparse's error, exit 2) a task count outside 1..the split's size."""
    if not 1 <= n <= envs.N_TASKS[split]:
        parser.error(f"--{flag} takes 1 to {envs.N_TASKS[split]} tasks, not {n}")


def table_main(argv, prog, description, run, n_valid=100, n_test=200):
    """The command line shared by the tables measured on a PPO checkpoint (prm.py, monitor.py): --ckpt, --out_dir,
    --n_valid (where the choices are made), --n_test and --device, each checked; then
    run(ckpt, out_dir, device, n_valid=, n_test=). A bad checkpoint is one clear line."""
    import argparse
    p = argparse.ArgumentParser(prog=prog, description=description)
    checkpoint.add_policy_arg(p, beside="any other checkpoints sit beside it")
    p.add_argument("--out_dir", default=None, help="where the table's json and md go (default: the ckpt's folder)")
    p.add_argument("--n_valid", type=int, default=n_valid, help="validation tasks (the choices are made here)")
    p.add_argument("--n_test", type=int, default=n_test, help="test tasks")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    check_tasks(p, "n_valid", args.n_valid, "valid")
    check_tasks(p, "n_test", args.n_test, "test")
    try:
        M.get_device(args.device)
    except ValueError as e:
        p.error(str(e))
    try:
        return run(args.ckpt, args.out_dir, args.device, n_valid=args.n_valid, n_test=args.n_test)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"{prog}: {e}")


def save_table(out_dir, name, data, lines):
    """Print a table's markdown lines and write them to out_dir/<name>.md, the numbers to <name>.json."""
    print("\n".join(lines))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1, default=float)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out_dir}/{name}.json and {name}.md")


def write(R, out_dir):
    save_table(out_dir, "report", R, table(R))


# -----------------------------------------------------------------------------
# the evaluation command line

def main(argv):
    import argparse
    p = argparse.ArgumentParser(description="Evaluate a trained PPO checkpoint: the test-split report, or a "
                                            "validation-only check (--valid, --optimum N).")
    checkpoint.add_policy_arg(p)
    p.add_argument("--ref", default=None, help="the reference checkpoint, if not beside --ckpt")
    p.add_argument("--pa_ref", default=None, help="score every PA against this checkpoint instead (an early or "
                   "merged reference: python train.py --stage=prm)")
    p.add_argument("--out_dir", default=None, help="where the JSON (and report.md) go (default: the ckpt's folder)")
    p.add_argument("--quick", action="store_true", help="the quick report (what train.py writes on a CPU)")
    p.add_argument("--valid", action="store_true", help="a quick check on the validation split only (for tuning)")
    p.add_argument("--optimum", type=int, default=0, help="solve the KL-regularised optimum exactly on N "
                   "validation tasks and compare PPO with it (the first time about half a minute per shop task on a CPU; the "
                   "reference's scores are then cached in optimum_cache/ beside its ref.pt)")
    p.add_argument("--ratio_scale", type=float, default=1.0, help="act (and read PA) with the PPO policy moved S "
                   "times as far from the reference along its own log-ratio, token by token: pi_ref (pi/pi_ref)^S")
    p.add_argument("--ratio_scales", default="", help="with --optimum: also score PPO at every reachable state and "
                   "give the exact success and KL of the policy moved S times as far along its log-ratio (per action), "
                   "for each S of a comma list (1 = the policy itself), with PA's fidelity and AUROC on episodes drawn "
                   "from it")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=256)
    args = p.parse_args(argv)
    try:
        scales = [float(x) for x in args.ratio_scales.split(",") if x.strip()]
    except ValueError:
        p.error(f"--ratio_scales takes a comma list of numbers, not {args.ratio_scales!r}")
    if scales and (not args.optimum or min(scales) <= 0):
        p.error("--ratio_scales needs --optimum N and positive numbers")
    if args.ratio_scale <= 0:
        p.error(f"--ratio_scale must be positive, not {args.ratio_scale}")
    if not 0 <= args.optimum <= envs.N_TASKS["valid"]:
        p.error(f"--optimum takes 1 to {envs.N_TASKS['valid']} validation tasks, not {args.optimum}")
    if args.batch_size < 1:
        p.error(f"--batch_size must be at least 1, not {args.batch_size}")
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.ckpt))
    try:
        M.get_device(args.device)
    except ValueError as e:
        p.error(str(e))
    try:
        if args.optimum:
            optimum.optimum_check(args.ckpt, out_dir, args.ref, args.device, args.batch_size, n=args.optimum,
                                  scales=scales, ratio_scale=args.ratio_scale)
        elif args.valid:
            validation_check(args.ckpt, out_dir, args.ref, args.device, args.batch_size, ratio_scale=args.ratio_scale)
        else:
            run(args.ckpt, out_dir, args.ref, args.device, args.batch_size, ReportConfig(**(QUICK if args.quick else {})),
                pa_ref=args.pa_ref, ratio_scale=args.ratio_scale)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"report.py: {e}")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
