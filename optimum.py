"""PPO against the exact optimum of its own objective, on validation tasks: every state reachable in a task is
scored by the reference network, the KL-regularised objective is solved exactly (envs.SoftSolution), and PPO's
samples are compared with the optimum pi* and with one round of policy improvement pi_1 from the reference.
`python report.py --ckpt out/ppo_avg.pt --optimum 8` runs it; diagnose.py uses its pieces."""
import hashlib
import json
import math
import os
import time

import numpy as np

import agents
import envs
import pa
import search as S
import tokenizer


def pct(x):
    return f"{100 * x:5.1f}"


def network_probs(agent, batch, model="ref"):
    """[{action: prob}] at each state of a batch [(prompt, actions)]: one network's ("ref" or "policy")
    probability of each action's own tokens. A constrained agent writes available actions only: its
    probabilities are the renormalised ones (summing to 1 at each state, nothing left for the no-op)."""
    lps = [lp.tolist() for lp in agent.action_logprobs([(agent.encode(p), acts) for p, acts in batch], model)]
    return [{a: math.exp(x) for a, x in zip(acts, lp)} for (_, acts), lp in zip(batch, lps)]


def reference_probs(agent, cache=None, model="ref"):
    """ref_probs for envs.SoftSolution: the reference network's network_probs (or the policy's, model="policy").
    With a cache path the answer is saved there once and reloaded after, so that the costly scoring of every
    reachable state is paid once per network, not once per check. For a constrained agent the optimum is that of
    the constrained objective."""
    def ref_probs(batch):
        if cache and os.path.exists(cache):
            with open(cache) as f:
                probs = json.load(f)
            if [sorted(p) for p in probs] == [sorted(acts) for _, acts in batch]:
                return probs
            print(f"[optimum] {cache} does not match this task's states: scoring them again")
        probs = network_probs(agent, batch, model)
        if cache:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            with open(cache + ".tmp", "w") as f:
                json.dump(probs, f)
            os.replace(cache + ".tmp", cache)
        return probs
    return ref_probs


def scaled_log_ratio(sol, probs, scale=1.0):
    """A policy known at every state of a solved task (probs: state -> {action: prob}, the rest of its mass on
    the no-op), moved `scale` times as far from the reference along its own log-ratio:
        pi_s(a|s) = pi_ref(a|s) exp(scale * log pi(a|s)/pi_ref(a|s)) / Z_s(s),
    returned as its log-ratio, a function (state, action) -> log pi_s/pi_ref for SoftSolution.expect. Scale 1 is
    the policy itself (renormalised over the actions the reference can take); if log pi/pi_ref were
    (Q - V) / beta' for some beta', pi_s would be the optimum for beta' / scale: the same direction, another size."""
    memo = {}

    def log_ratio(st, a):
        if st not in memo:
            terms, p = sol.ref_terms(st), probs[st]
            pol = [max(1.0 - sum(p.values()), 0.0) if b == sol.invalid else p[b] for b, _ in terms]
            raw = [math.log(max(q / sum(pol), 1e-30) / r) for q, (_, r) in zip(pol, terms)]
            m = max(scale * x for x in raw)
            log_z = m + math.log(sum(r * math.exp(scale * x - m) for x, (_, r) in zip(raw, terms)))
            memo[st] = {b: scale * x - log_z for x, (b, _) in zip(raw, terms)}
        return memo[st][a if a in sol.pi_ref[st] else sol.invalid]
    return log_ratio


def sample_exact(env, sol, log_ratio, n, seed=0):
    """n episodes of the policy pi_ref exp(log_ratio) from env's state, drawn over the solved states without a
    network (the no-op stands for every text that is not an action). Per episode: (success, [(state, action)])."""
    rng, out = np.random.default_rng(seed), []
    for i in range(n):
        e, path, info = env.clone(), [], {}
        e.rng = np.random.default_rng([seed, i])
        while not e.done:
            terms = sol.ref_terms(e.state)
            w = np.array([r * math.exp(log_ratio(e.state, a)) for a, r in terms])
            a = terms[rng.choice(len(terms), p=w / w.sum())][0]
            path.append((e.state, a))
            _, _, _, info = e.step(a)
        out.append((bool(info["success"]), path))
    return out


def _scaled_task(agent, env, sol, batch, scales, n_exact, cache):
    """The PPO network's own probability of every action at every state of the solved task (one more scoring
    of the whole tree, cached like the reference's), and for each scale s, pi_s (scaled_log_ratio): its exact success and KL, and on n_exact
    episodes drawn from it, each step's log-ratio next to the optimum's, and each episode's summed PA and log-prob."""
    probs, s0, out = dict(zip(sol.states, reference_probs(agent, cache, "policy")(batch))), env.state, []
    for k, scale in enumerate(scales):
        lr = scaled_log_ratio(sol, probs, scale)
        success, _, kl = sol.expect(s0, lr)
        eps = sample_exact(env, sol, lr, n_exact, seed=k)
        out.append(dict(scale=scale, success=success, kl=kl,
                        steps=dict(pol=[lr(st, a) for _, path in eps for st, a in path],
                                   opt=[sol.log_ratio(st, a) for _, path in eps for st, a in path]),
                        trajs=dict(pa=[sum(lr(st, a) for st, a in path) for _, path in eps],
                                   logprob=[sum(lr(st, a) + math.log(dict(sol.ref_terms(st))[a]) for st, a in path)
                                            for _, path in eps],
                                   success=[ok for ok, _ in eps])))
    return out


def _optimum_task(run_, task, n_samples, max_steps, cache, scales=(), n_exact=32, policy_cache=None):
    """Solve one validation task exactly and compare PPO's samples with the optimum there."""
    agent, beta, t0 = run_.ppo, run_.ppo.beta, time.time()
    env = envs.make_env(run_.env_name, "valid", task=task, seed=0, max_steps=max_steps)
    ref_probs, batches = reference_probs(agent, cache), []
    sol = env.soft_solution(lambda batch: batches.append(batch) or ref_probs(batch), beta)
    s0 = env.state
    (opt_s, opt_r, opt_kl), (ref_s, ref_r, _) = sol.expect(s0), sol.expect(s0, "reference")
    row = dict(task=task, states=len(sol.states), v_soft=sol.v(s0), v_star=env.optimal_value(), opt_success=opt_s,
               opt_reward=opt_r, opt_kl=opt_kl, identity_err=beta * opt_kl - (opt_r - sol.v(s0)),
               ref_success=ref_s, ref_reward=ref_r)
    row["imp_success"], row["imp_reward"], row["imp_kl"] = sol.expect(s0, "improved")
    samples = [envs.make_env(run_.env_name, "valid", task=task, seed=s, max_steps=max_steps) for s in range(n_samples)]
    eps = agents.rollout(agent, samples, False, run_.gen, oracle=True, keep_states=True)
    row["steps"] = dict(ppo=[st.log_ratio for ep in eps for st in ep.steps],
                        opt=[sol.log_ratio(st.env.state, st.text) for ep in eps for st in ep.steps],
                        astar=[st.qstar - st.vstar for ep in eps for st in ep.steps],
                        aref=[sol.ref_advantage(st.env.state, st.text) for ep in eps for st in ep.steps],
                        imp=[sol.improved_log_ratio(st.env.state, st.text) for ep in eps for st in ep.steps],
                        valid=[st.valid for ep in eps for st in ep.steps],
                        kind=[envs.step_kind(st.text, st.env.actions()) for ep in eps for st in ep.steps])
    flat, row["lens"] = [st for ep in eps for st in ep.steps], [len(ep.steps) for ep in eps]
    row["all_actions"] = _all_actions(agent, sol, flat)
    kl, ends = row["all_actions"].pop("state_kl"), np.cumsum([0] + row["lens"])
    noop = row["all_actions"].pop("noop")  # PA of an invalid step read as the no-op's: one number for every such text
    best = {k: row["all_actions"].pop(k) for k in ("best", "best_logprob", "best_opt", "best_imp")}
    for st, x in zip(flat, noop):
        st.noop_log_ratio = None if st.valid else x  # as agents.read_noop leaves it, from the same scores
    merged = S.noop_ratio(flat, "noop")
    row["steps"]["noop"] = merged  # pi*'s log-ratio of any invalid text is already the no-op's (SoftSolution.log_ratio)
    row["trajs"] = dict(ppo=[beta * sum(st.log_ratio for st in ep.steps) for ep in eps],
                        centred=[beta * sum(st.log_ratio - k for st, k in zip(ep.steps, kl[i:j]))
                                 for ep, i, j in zip(eps, ends, ends[1:])],
                        path_kl=[-beta * sum(kl[i:j]) for i, j in zip(ends, ends[1:])],
                        logprob=[sum(float(st.logprobs.sum()) for st in ep.steps) for ep in eps],
                        noop=[beta * sum(merged[i:j]) for i, j in zip(ends, ends[1:])],
                        path_kl_opt=[-beta * sum(_state_kl(sol, st.env.state, sol.log_ratio) for st in ep.steps) for ep in eps],
                        path_kl_imp=[-beta * sum(_state_kl(sol, st.env.state, sol.improved_log_ratio) for st in ep.steps)
                                     for ep in eps],
                        opt=[beta * sum(sol.log_ratio(st.env.state, st.text) for st in ep.steps) for ep in eps],
                        imp=[beta * sum(sol.improved_log_ratio(st.env.state, st.text) for st in ep.steps) for ep in eps],
                        success=[ep.success for ep in eps])
    # minus the summed gap between each step and the best available action at its state (search's pa_gap; 0 where
    # an invalid text reads above every action), by PPO's log-ratio, its log-prob, pi*'s and pi_1's log-ratio
    gaps = dict(gap=[b - x for b, x in zip(best["best"], merged)],
                gap_logprob=[b - float(st.logprobs.sum()) for b, st in zip(best["best_logprob"], flat)],
                gap_opt=[b - sol.log_ratio(st.env.state, st.text) for b, st in zip(best["best_opt"], flat)],
                gap_imp=[b - sol.improved_log_ratio(st.env.state, st.text) for b, st in zip(best["best_imp"], flat)])
    for name, g in gaps.items():
        row["trajs"][name] = [-beta * sum(max(0.0, x) for x in g[i:j]) for i, j in zip(ends, ends[1:])]
    row["scaled"] = _scaled_task(agent, env, sol, batches[0], scales, n_exact, policy_cache) if scales else []
    row["seconds"] = round(time.time() - t0, 1)
    print(f"[optimum] task {task}: {len(sol.states)} states, pi* succeeds {pct(opt_s)}% with KL {opt_kl:.2f} "
          f"nats/episode, pi_ref {pct(row['ref_success'])}% ({row['seconds']} s)")
    return row


def _by_improved(p, imp):
    """PPO's per-step log-ratio (nats) on its sampled steps, grouped by how one exact round of improvement, pi_1,
    scores the same step: below -2 nats (steps that pi_1 makes much rarer), -2 to 0, and 0 or more. For PA's sum
    to predict failure as pi_1's does, the first group must sit far below the last."""
    groups = {"below -2": imp < -2, "-2 to 0": (imp >= -2) & (imp < 0), "0 or more": imp >= 0}
    stat = lambda fn, x, m: float(fn(x[m])) if m.any() else math.nan
    return {name: dict(steps=int(m.sum()), ppo=stat(np.mean, p, m), ppo_sd=stat(np.std, p, m),
                       imp=stat(np.mean, imp, m)) for name, m in groups.items()}


def _state_kl(sol, state, log_ratio):
    """KL(pi || pi_ref) at a state of an exact policy given by its log-ratio (sol.log_ratio: pi*; improved: pi_1)."""
    return sum(p * math.exp(x) * x for x, p in ((log_ratio(state, a), p) for a, p in sol.ref_terms(state)))


def kind_masks(kinds):
    """{kind: boolean mask} for an array of kinds of step (envs.step_kind), the most frequent first (ties by name)."""
    masks = {k: kinds == k for k in set(kinds.tolist())}
    return {k: masks[k] for k in sorted(masks, key=lambda k: (-masks[k].sum(), k))}


def _by_kind(p, o, kinds):
    """PPO's log-ratio against the optimum's within each kind of step (envs.step_kind: search, item click, option
    click, buy, ...), with each kind's spread on both sides: which decisions PPO has learnt, and which not."""
    return {k: dict(steps=int(m.sum()), pearson=pearson(p[m], o[m]), opt_sd=float(o[m].std()), ppo_sd=float(p[m].std()))
            for k, m in kind_masks(kinds).items()}


def _all_actions(agent, sol, steps):
    """At each visited state, every available action: PPO's log-ratio, the optimum's, pi_1's and the reference's
    log-prob (the control: what a policy that only sharpened the reference would show), each centred over the
    state's actions (what a policy ranks, wherever its own samples went). Returns them as lists, and under
    "state_kl" one number per step: KL(pi || pi_ref) at its state over the available actions and one bucket for
    every other text (a lower bound on the KL over texts; exact for a constrained agent), and under "noop" the
    log-ratio of that bucket, log pi(no action) / pi_ref(no action) (nan where either has no mass)."""
    states = [(st.prompt, sorted(a for a in sol.pi_ref[st.env.state] if a != sol.invalid), st.env.state) for st in steps]
    prompts = [p for p, acts, _ in states for _ in acts]
    actions = [tokenizer.encode_action(agent.enc, a) for _, acts, _ in states for a in acts]
    rows = agent.score(prompts, actions, ("policy", "ref"), [tuple(acts) for _, acts, _ in states for _ in acts])
    out, k = dict(ppo=[], opt=[], imp=[], ref=[], kind=[], state=[], state_kl=[], noop=[], best=[], best_logprob=[],
                  best_opt=[], best_imp=[]), 0
    for i, (_, acts, state) in enumerate(states):
        lr = [float((r["logprobs"] - r["ref_logprobs"]).sum()) for r in rows[k:k + len(acts)]]
        ref = [float(r["ref_logprobs"].sum()) for r in rows[k:k + len(acts)]]
        k += len(acts)
        p = np.exp(np.add(lr, ref))
        rest_p = 1.0 - p.sum()
        noop = agents.noop_log_ratio(rest_p, 1.0 - np.exp(ref).sum())
        out["state_kl"].append(float(p @ np.asarray(lr)) + (0.0 if math.isnan(noop) else rest_p * noop))
        out["noop"].append(noop)
        opt, imp = [sol.log_ratio(state, a) for a in acts], [sol.improved_log_ratio(state, a) for a in acts]
        for name, xs in (("ppo", lr), ("ref", ref), ("opt", opt), ("imp", imp)):
            out[name] += list(np.asarray(xs) - np.mean(xs))
        out["kind"] += [envs.step_kind(a, acts) for a in acts]
        out["state"] += [i] * len(acts)
        for name, xs in (("best", lr), ("best_logprob", np.add(lr, ref)), ("best_opt", opt), ("best_imp", imp)):
            out[name].append(float(np.max(xs)))
    return out


def _all_actions_by_kind(T):
    """Over every available action of the visited states, the optimum's log-ratio (centred per state, as
    _all_actions gives it) split into the choice within each kind of action at a state (which item, which option:
    each log-ratio less the mean of its kind at that state) and what lies between the kinds (those means: buy, go
    back or click on). Returns ({kind: ...}, between), each with PPO's log-ratio against the optimum's (Pearson),
    the reference's log-prob against it (the sharpening control: what a policy that only sharpened the reference
    would show) and opt_share, its part of the optimum's sum of squares (the kinds' and between's add up to 1).
    Within a kind, only states with two actions of it or more count."""
    cat = lambda key: np.concatenate([np.asarray(t["all_actions"][key], dtype=float) for t in T])
    kinds = np.array([k for t in T for k in t["all_actions"]["kind"]])
    key = np.array([f"{j}/{s}/{k}" for j, t in enumerate(T)  # (task, state, kind)
                    for s, k in zip(t["all_actions"]["state"], t["all_actions"]["kind"])])
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    mean = {name: np.bincount(inv, cat(name))[inv] / counts[inv] for name in ("ppo", "opt", "ref")}
    within = {name: cat(name) - mean[name] for name in mean}
    total = float((cat("opt") ** 2).sum())
    share = lambda x: float((x ** 2).sum()) / total if total > 0 else math.nan
    part = lambda cols: dict(pearson_optimum=pearson(cols["ppo"], cols["opt"]),
                             sharpening_optimum=pearson(cols["ref"], cols["opt"]), opt_share=share(cols["opt"]))
    out = {}
    for kind, m in kind_masks(kinds).items():
        keep = m & (counts[inv] > 1)
        out[kind] = dict(rows=int(keep.sum()), states=int(np.unique(inv[keep]).size),
                         **part({name: x[keep] for name, x in within.items()}))
    return out, part(mean)


def _scaled_summary(T, k, ci):
    """Over the tasks of a check, the k-th scale of _scaled_task: exact success and KL (task means), and on the
    episodes drawn from pi_s, Pearson with the optimum and failure AUROCs, with intervals over tasks."""
    rows = [t["scaled"][k] for t in T]
    cat = lambda part, key, idx=range(len(T)): [x for i in idx for x in rows[i][part][key]]
    pear = lambda idx=range(len(T)): pearson(cat("steps", "pol", idx), cat("steps", "opt", idx))
    auc = lambda key, idx=range(len(T)): pa.auroc(cat("trajs", key, idx), cat("trajs", "success", idx))
    return dict(scale=rows[0]["scale"], success=float(np.mean([r["success"] for r in rows])),
                kl=float(np.mean([r["kl"] for r in rows])), episodes=len(cat("trajs", "success")),
                sampled_success=float(np.mean(cat("trajs", "success"))), pearson=pear(),
                pearson_ci=ci(lambda idx: pear(idx)), auroc=auc("pa"), auroc_ci=ci(lambda idx: auc("pa", idx)),
                auroc_logprob=auc("logprob"))


def residual_split(ppo, opt, success, noise_scales=(1.0, 0.5, 0.25), draws=200, seed=0):
    """Why a policy's summed PA predicts failure worse than its per-step correlation with pi*'s suggests.
    ppo, opt: per episode, the log-ratio of each sampled step by the policy and by pi*; success: per episode.
    The policy's log-ratio is split into its least-squares fit on pi*'s, slope * pi*'s (+ a constant), and a
    residual. Returns the slope, both parts' per-step variance, the failure AUROC of each part summed over the
    episode (the fitted part's is pi*'s own when the slope is positive), and, for each f in noise_scales, that of
    the fitted part plus independent Gaussian noise of f times the residual's size at every step, with the
    per-step Pearson such a policy would have (means over draws). f = 1 says what noise of the residual's size
    costs if it leaned neither way; f < 1 what a policy with less of it would reach."""
    o, p = np.concatenate(opt), np.concatenate(ppo)
    if len(p) < 3 or np.std(o) == 0:
        return dict(slope=math.nan, var_fit=math.nan, var_residual=math.nan, auroc_fit=math.nan,
                    auroc_residual=math.nan, noise=[])
    slope, c = np.polyfit(o, p, 1)
    res = [np.asarray(x) - slope * np.asarray(y) - c for x, y in zip(ppo, opt)]
    sd, rng = float(np.std(np.concatenate(res))), np.random.default_rng(seed)
    fit_sums = np.array([slope * np.sum(y) for y in opt])
    noise = []
    for f in noise_scales:
        draw = lambda: [slope * np.asarray(y) + rng.normal(0.0, f * sd, len(y)) for y in opt]
        sims = [draw() for _ in range(draws)]
        noise.append(dict(scale=f, auroc=float(np.mean([pa.auroc([x.sum() for x in d], success) for d in sims])),
                          pearson=float(np.mean([pearson(np.concatenate(d), o) for d in sims]))))
    return dict(slope=float(slope), var_fit=float(np.var(slope * o)), var_residual=sd ** 2,
                auroc_fit=pa.auroc(fit_sums, success), auroc_residual=pa.auroc([x.sum() for x in res], success),
                noise=noise)


def pearson(x, y):
    x, y = np.asarray(x), np.asarray(y)
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 and x.std() > 0 and y.std() > 0 else math.nan


def default_cache_dir(ref_path):
    """Where the scores of every reachable state are cached unless a cache_dir is given: beside the reference,
    so that every check of every policy trained from it, whatever its out_dir, finds them."""
    return os.path.join(os.path.dirname(os.path.abspath(ref_path)), "optimum_cache")


def optimum_cache(ref_path, temperature, max_steps, cache_dir, constrained=False, ratio_scale=1.0):
    """task -> the file that caches a network's scores of every state of that validation task (the reference's,
    or the policy's with --ratio_scales), named by the network file's hash, the temperature, the episode budget (0 = the
    world's own), whether the network writes available actions only, and the policy's --ratio_scale if not 1."""
    with open(ref_path, "rb") as f:
        ref_hash = hashlib.sha1(f.read()).hexdigest()[:12]
    tail = ("-available" if constrained else "") + (f"-ratio{ratio_scale:g}" if ratio_scale != 1.0 else "")
    return lambda t: os.path.join(cache_dir, f"{ref_hash}-T{temperature:g}-valid{t}-steps{max_steps or 0}{tail}.json")


def optimum_check(ppo_path, out_dir, ref_path=None, device="auto", batch_size=256, n=8, n_samples=8, seed=0,
                  max_steps=None, cache_dir=None, scales=(), n_exact=32, ratio_scale=1.0):
    """How far is PPO from the optimum of its own objective? On n validation tasks, solve the KL-regularised
    objective exactly (envs.SoftSolution over every state reachable from the start, pi_ref = the reference
    network's probability of each action's text, the rest of its mass on the no-op) and measure:
      - the optimum's success probability, expected reward and KL(pi* || pi_ref) per episode, and the
        reference's own success probability (exact: a check of the solver against sampled success);
      - at every step of n_samples PPO samples per task: PPO's log-ratio log pi/pi_ref against the optimum's
        log pi*/pi_ref = (Q - V) / beta for the same action (Pearson and Spearman), and the Pearson correlation
        again with each invalid text's log-ratio read as the no-op's (every text that is not an action taken
        together: the world's one no-op action, and what pi*'s log-ratio of any such text is);
      - PA of the optimum (beta times its log-ratio: the soft advantage) as a process reward on those samples,
        next to PPO's PA: Spearman with the hard A*, and AUROC of the trajectory sum for success;
      - Spearman of both with A^ref, the advantage under the reference's own continuation (what one round of
        policy improvement from pi_ref follows; SoftSolution.ref_advantage);
      - that one round itself, pi_1 = pi_ref exp(A^ref / beta) / Z (SoftSolution.improved_log_ratio): its exact
        success and KL, the Pearson correlation of its log-ratio with PPO's and with the optimum's, and the failure
        AUROC of its PA on PPO's samples;
      - over EVERY available action of the visited states, each log-ratio centred per state: PPO's against pi_1's
        and the optimum's. A policy can rank actions well where it goes and still show little of it on the actions
        it samples, since sampling picks the actions whose log-ratio errs upwards;
      - three label-free variants of PPO's PA: with each invalid text's log-ratio replaced by the no-op's, the
        log-ratio of all texts that are not actions taken together ("noop"); less the policy's KL at each visited
        state (zero mean under the policy, so the upward error of what it samples is taken out on average); and
        minus the KL summed along the path
        (failure AUROC under "centred" and "path_kl"; and with pi*'s and pi_1's exact KL at the same states,
        "path_kl_opt" and "path_kl_imp"), next to the policy's own log-prob of the episode ("logprob");
      - minus the summed gap between each step and the best available action at its state (search's "pa_gap"), by
        PPO's log-ratio ("gap"), by its log-prob ("gap_logprob"), and by pi*'s and pi_1's ("gap_opt", "gap_imp").
      - PPO's log-ratio against pi*'s within each kind of step ("by_kind": search, item click, buy, ...) on the
        sampled steps; and over every available action, the optimum's log-ratio split into the choice within each
        kind at a state (which item of a results page, which option) and the choice between the kinds, each with
        PPO's agreement, the reference's (sharpening) and its share ("all_actions": "by_kind", "between_kinds");
      - PPO's log-ratio split into its fit on pi*'s and a residual (residual_split): the failure AUROC of each
        part's sum, and of the fit plus independent noise of the residual's size, or a fraction of it ("residual").
    ratio_scale S != 1: PPO acts as the policy moved S times along its own log-ratio (agents.load_run).
    With scales (say 1, 1.5, 2), the PPO network is also scored at every reachable state, and pi_s, the policy
    moved s times as far along its own log-ratio (scaled_log_ratio; s = 1: the policy itself), gets its exact
    success and KL and, on n_exact episodes per task drawn from it without the network, the Pearson correlation
    of its log-ratio with the optimum's and the failure AUROC of its summed PA and of its log-prob ("scaled").
    Intervals are 95% bootstrap percentiles over TASKS (the steps of one task are not independent). Writes
    optimum.json to out_dir and returns it. Costly the first time: every reachable state is scored by the
    reference (a shop task has 5,000-12,000; max_steps, the episode budget, shrinks the tree for tests); those
    scores are cached in cache_dir (default: optimum_cache/ beside the reference file) under the reference file's
    hash and the temperature, so later checks of other policies with the same reference, in any out_dir, only
    sample and compare."""
    run_ = agents.load_run(ppo_path, ref_path, device, batch_size, seed, ratio_scale=ratio_scale)
    cache_dir = cache_dir or default_cache_dir(run_.ref_path)
    cache = optimum_cache(run_.ref_path, run_.ppo.temperature, max_steps, cache_dir, run_.ppo.constrained)
    pcache = optimum_cache(ppo_path, run_.ppo.temperature, max_steps, cache_dir,
                           run_.ppo.constrained, ratio_scale)  # the policy's scores, when scales ask for them
    T = [_optimum_task(run_, t, n_samples, max_steps, cache(t), scales, n_exact, pcache(t)) for t in range(n)]
    cat = lambda part, k, idx=range(n): [x for i in idx for x in T[i][part][k]]
    p, o, a, aref, imp, ok = (np.array(cat("steps", k)) for k in ("ppo", "opt", "astar", "aref", "imp", "valid"))
    ci = lambda fn: pa.bootstrap_ci(np.arange(n), lambda idx: fn(idx), n_boot=300)
    beta = run_.ppo.beta
    by_kind_all, between_kinds = _all_actions_by_kind(T)
    O = {"env": run_.env_name, "beta": beta, "n": n, "n_samples": n_samples,
         "tasks": [{k: v for k, v in t.items() if k not in ("steps", "trajs", "all_actions", "scaled", "lens")} for t in T],
         "optimum": {k: float(np.mean([t[k] for t in T])) for k in ("opt_success", "opt_reward", "opt_kl",
                                                                      "ref_success", "v_soft", "v_star")},
         "max_identity_err": float(max(abs(t["identity_err"]) for t in T)),
         "ppo": dict(sampled_success=float(np.mean(cat("trajs", "success"))),
                     kl=float(np.mean(cat("trajs", "ppo"))) / beta),
         "log_ratio": dict(pearson=pearson(p, o), spearman=pa.spearman(p, o), steps=len(p),  # nan: a constant side
                           pearson_ci=ci(lambda idx: pearson(cat("steps", "ppo", idx), cat("steps", "opt", idx))),
                           pearson_valid=pearson(p[ok], o[ok]), valid_steps=int(ok.sum()),
                           pearson_noop=pearson(cat("steps", "noop"), o),
                           pearson_noop_ci=ci(lambda idx: pearson(cat("steps", "noop", idx), cat("steps", "opt", idx)))),
         "improved": dict(success=float(np.mean([t["imp_success"] for t in T])),
                          kl=float(np.mean([t["imp_kl"] for t in T])), pearson_ppo=pearson(p, imp),
                          pearson_optimum=pearson(o, imp), auroc=pa.auroc(cat("trajs", "imp"), cat("trajs", "success"))),
         "all_actions": dict(pearson_optimum=pearson(cat("all_actions", "ppo"), cat("all_actions", "opt")),
                             pearson_improved=pearson(cat("all_actions", "ppo"), cat("all_actions", "imp")),
                             pearson_improved_sampled=pearson(p, imp), rows=len(cat("all_actions", "ppo")),
                             sharpening_improved=pearson(cat("all_actions", "ref"), cat("all_actions", "imp")),
                             pearson_improved_ci=ci(lambda idx: pearson(cat("all_actions", "ppo", idx),
                                                                        cat("all_actions", "imp", idx))),
                             by_kind=by_kind_all, between_kinds=between_kinds),
         "by_improved": _by_improved(p, imp),
         "by_kind": _by_kind(p, o, np.array(cat("steps", "kind"))),
         "pa_vs_astar": dict(ppo=pa.spearman(p, a), optimum=pa.spearman(o, a)),
         "pa_vs_aref": dict(ppo=pa.spearman(p, aref), optimum=pa.spearman(o, aref)),
         "auroc": {k: pa.auroc(cat("trajs", k), cat("trajs", "success"))
                   for k in ("ppo", "opt", "centred", "path_kl", "path_kl_opt", "path_kl_imp", "logprob", "noop", "gap",
                             "gap_logprob", "gap_opt", "gap_imp")},
         "auroc_ci": {k: ci(lambda idx, k=k: pa.auroc(cat("trajs", k, idx), cat("trajs", "success", idx)))
                      for k in ("ppo", "opt")}}
    O["auroc"]["optimum"], O["auroc_ci"]["optimum"] = O["auroc"].pop("opt"), O["auroc_ci"].pop("opt")
    per_episode = lambda k: [np.array(t["steps"][k][i:j]) for t in T
                             for i, j in zip(np.cumsum([0] + t["lens"]), np.cumsum(t["lens"]))]
    O["residual"] = residual_split(per_episode("ppo"), per_episode("opt"), cat("trajs", "success"))
    O["scaled"] = [_scaled_summary(T, k, ci) for k in range(len(scales))]
    m, lr = O["optimum"], O["log_ratio"]
    print(f"[optimum] {n} validation tasks, beta {beta}: pi* succeeds {pct(m['opt_success'])}% "
          f"(KL {m['opt_kl']:.2f} nats/episode), pi_ref {pct(m['ref_success'])}%; PPO samples "
          f"{pct(O['ppo']['sampled_success'])}% (KL {O['ppo']['kl']:.2f})")
    print(f"[optimum] PPO's log-ratio vs the optimum's on {len(p)} steps: Pearson {lr['pearson']:+.3f} "
          f"[{lr['pearson_ci'][0]:+.2f}, {lr['pearson_ci'][1]:+.2f}] (on the {lr['valid_steps']} steps with an "
          f"available action: {lr['pearson_valid']:+.3f}; with each invalid text read as the no-op: "
          f"{lr['pearson_noop']:+.3f} [{lr['pearson_noop_ci'][0]:+.2f}, {lr['pearson_noop_ci'][1]:+.2f}]), Spearman "
          f"{lr['spearman']:+.3f} | Spearman with "
          f"A*: PPO's PA {O['pa_vs_astar']['ppo']:+.3f}, the optimum's {O['pa_vs_astar']['optimum']:+.3f} | with the "
          f"reference's own advantage A^ref: PPO's {O['pa_vs_aref']['ppo']:+.3f}, the optimum's "
          f"{O['pa_vs_aref']['optimum']:+.3f} | failure "
          f"AUROC: PPO's PA {O['auroc']['ppo']:.3f}, the optimum's {O['auroc']['optimum']:.3f}")
    im = O["improved"]
    print(f"[optimum] one round of policy improvement from pi_ref, pi_1: succeeds {pct(im['success'])}% (KL "
          f"{im['kl']:.2f}); its log-ratio vs PPO's: Pearson {im['pearson_ppo']:+.3f}, vs the optimum's: "
          f"{im['pearson_optimum']:+.3f}; failure AUROC of its PA on PPO's samples {im['auroc']:.3f}")
    aa = O["all_actions"]
    print(f"[optimum] over every available action at the states of the {len(p)} sampled steps, centred per state: PPO's log-ratio "
          f"vs pi_1's: Pearson {aa['pearson_improved']:+.3f} [{aa['pearson_improved_ci'][0]:+.2f}, "
          f"{aa['pearson_improved_ci'][1]:+.2f}] (on its sampled actions: {aa['pearson_improved_sampled']:+.3f}), vs the optimum's: "
          f"{aa['pearson_optimum']:+.3f}; a policy that only sharpened the reference: {aa['sharpening_improved']:+.3f} "
          f"with pi_1's")
    print("[optimum] within each kind of step, PPO's log-ratio vs the optimum's (Pearson; sd of each, nats): " +
          "; ".join(f"{k} ({b['steps']} steps) {b['pearson']:+.2f} ({b['ppo_sd']:.2f}, {b['opt_sd']:.2f})"
                    for k, b in O["by_kind"].items()))
    part = lambda b: f"{b['pearson_optimum']:+.2f} ({b['sharpening_optimum']:+.2f}; {b['opt_share']:.2f})"
    print("[optimum] over every available action, within each kind at each state (Pearson with the optimum's; of the "
          "reference's log-prob, the sharpening control; the kind's share of the optimum's log-ratio): " +
          "; ".join(f"{k} ({b['rows']} actions at {b['states']} states) {part(b)}" for k, b in aa["by_kind"].items()
                    if b["states"]) + f"; between the kinds at a state {part(aa['between_kinds'])}")
    print("[optimum] PPO's log-ratio on its sampled steps, by pi_1's log-ratio of the same step: " + "; ".join(
        f"{name} ({b['steps']} steps, pi_1 {b['imp']:+.2f}): {b['ppo']:+.2f} (sd {b['ppo_sd']:.2f})"
        for name, b in O["by_improved"].items()))
    print(f"[optimum] failure AUROC of PPO's PA less its KL at each state (zero mean under PPO): "
          f"{O['auroc']['centred']:.3f}; of minus the KL summed along the path: {O['auroc']['path_kl']:.3f} "
          f"(pi*'s KL on the same states: {O['auroc']['path_kl_opt']:.3f}, pi_1's: {O['auroc']['path_kl_imp']:.3f}); "
          f"of the policy's log-prob of the episode: {O['auroc']['logprob']:.3f}; of PA with each invalid text's "
          f"log-ratio replaced by that of all of them together (the no-op's): {O['auroc']['noop']:.3f}")
    a = O["auroc"]
    print(f"[optimum] failure AUROC of minus the summed gap to the state's best available action: by PPO's "
          f"log-ratio {a['gap']:.3f}, by its log-prob {a['gap_logprob']:.3f}, by pi*'s {a['gap_opt']:.3f}, by pi_1's "
          f"{a['gap_imp']:.3f}")
    r = O["residual"]
    print(f"[optimum] PPO's log-ratio = {r['slope']:.2f} x the optimum's + a residual (per-step variance "
          f"{r['var_fit']:.3f} and {r['var_residual']:.3f}): failure AUROC of the first part's sum "
          f"{r['auroc_fit']:.3f}, of the residual's {r['auroc_residual']:.3f}; of the first plus independent noise "
          f"of the residual's size " + ", ".join(f"x{x['scale']:g} {x['auroc']:.3f} (per-step Pearson "
                                                f"{x['pearson']:+.2f})" for x in r["noise"]))
    for x in O["scaled"]:
        print(f"[optimum] PPO moved x{x['scale']:g} along its log-ratio, exactly: succeeds {pct(x['success'])}% "
              f"(KL {x['kl']:.2f}); on {x['episodes']} episodes drawn from it: Pearson with the optimum's "
              f"{x['pearson']:+.3f} [{x['pearson_ci'][0]:+.2f}, {x['pearson_ci'][1]:+.2f}], failure AUROC of PA "
              f"{x['auroc']:.3f} [{x['auroc_ci'][0]:.2f}, {x['auroc_ci'][1]:.2f}], of the log-prob {x['auroc_logprob']:.3f}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "optimum.json"), "w") as f:
        json.dump(O, f, indent=1, default=float)
    return O
