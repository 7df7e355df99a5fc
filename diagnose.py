"""
diagnose.py: why does the network's PPO miss the optimum of its own objective?

The RL stage is meant to solve  max_pi E[sum_t r_t - beta * log(pi/pi_ref)(a_t|s_t)],  whose optimum
pi* = pi_ref * exp((Q* - V*) / beta) makes PA the soft advantage (Proposition 1). On a table, train.py's PPO
math gets there (tabular.py); in the shop it does not (LOG.md). Each diagnostic here runs on validation tasks whose
optimum the optimum check solves exactly, to tell estimation (critic, GAE, samples) from optimisation (Adam,
clipping, the network) and from how PA is read. The readings of trained policies are here (kl_split, estimates,
cross_scores, soup); the runs that train a network under controlled conditions (--few_tasks, --improve) are in
experiments.py, and this CLI runs both:

    python diagnose.py --ckpt out/ppo_avg.pt --kl_split 50  # where a trained policy's KL goes, on 50 validation tasks
    python diagnose.py --few_tasks 8 --advantages exact # the network's PPO on 8 validation tasks against pi* there
    python diagnose.py --few_tasks 8 --start optimum    # ... starting from pi* distilled into the network
    python diagnose.py --few_tasks 16 --train_from 16 --train_tasks 64  # PPO on 64 other tasks, checked on 16
    python diagnose.py --few_tasks 16 --start optimum --iters 0 --distil_loss ratio  # pi*'s PA taught directly
    python diagnose.py --estimates 16                   # how well GAE and re-rollouts know the reference's advantage
    python diagnose.py --improve 64                     # one round of improvement from rollouts, fitted, then checked
    python diagnose.py --ckpt out/ppo_avg.pt --cross a/ppo.pt,b/ppo.pt  # PA of other policies on out/ppo_avg.pt's samples
    python diagnose.py --soup a/ppo.pt,b/ppo.pt --out c/ppo.pt  # average PPO runs' weights (then check c/)
    python diagnose.py --soup a/ppo_avg.pt --scale 2 --ref a/ref.pt --out d/ppo.pt  # twice as far from the reference
    python diagnose.py --soup a/ppo_avg.pt --moved wte,wpe,lm_head --ref a/ref.pt --out e/ppo.pt  # only its embeddings
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

import agents
import checkpoint
import envs
import experiments
import pa
import ppo_variants
import optimum
import train


def kl_split(ckpt, n_tasks, n_samples=4, device="cpu"):
    """Where a trained policy's KL to its reference goes, on sampled episodes of n_tasks validation tasks:
    the sampled log-ratio summed per kind of step (per episode), and, at every visited state, over ALL its
    available actions, whether log pi/pi_ref follows the reference's own preferences (sharpening: Spearman with
    log pi_ref) or the oracle's advantage (reweighting: Spearman with A*), plus how often the argmax moved."""
    agent, env_name, _, _ = agents.load_agent(ckpt, device=device)
    eps = agents.rollout(agent, agents.make_envs(env_name, "valid", range(n_tasks), range(n_samples)),
                    generator=torch.Generator().manual_seed(0), oracle=True, keep_states=True)
    per_kind, total = {}, float(np.mean([sum(st.log_ratio for st in ep.steps) for ep in eps]))
    for ep in eps:
        for st in ep.steps:
            kind = envs.step_kind(st.text, st.env.actions())
            per_kind[kind] = per_kind.get(kind, 0.0) + st.log_ratio / len(eps)
    states = [st.env for ep in eps for st in ep.steps]
    sharpen, reweight, moved = [], [], []
    for env, cands in zip(states, agents.score_actions(agent, states)):
        lp, ref = (np.array([float(getattr(c, k).sum()) for c in cands]) for k in ("logprobs", "ref_logprobs"))
        lr = np.array([c.log_ratio for c in cands])
        adv = np.array([env.q_star(c.text) - env.optimal_value() for c in cands])
        if len(cands) > 1 and lr.std() > 0:
            if ref.std() > 0:
                sharpen.append(pa.spearman(lr, ref))
            if adv.std() > 0:
                reweight.append(pa.spearman(lr, adv))
        moved.append(lp.argmax() != ref.argmax())
    return dict(env=env_name, episodes=len(eps), kl_per_episode=per_kind, kl_total=total, states=len(states),
                spearman_logratio_vs_ref_logprob=float(np.mean(sharpen)),
                spearman_logratio_vs_astar=float(np.mean(reweight)), argmax_moved=float(np.mean(moved)))


def estimates(ref_path, n_tasks=16, n_samples=8, ks=(1, 4), cache_dir=None, device="cpu", seed=0, max_steps=None,
              **overrides):
    """How well does each advantage estimator know A^ref, the reference's own advantage, at the states it visits?
    That is what PPO's first iteration needs (policy = reference, so the KL term is 0 and the soft advantage is
    A^ref exactly), and what one exact round of improvement (pi_1) is built from. On n_samples of the reference's
    own episodes per validation task: GAE with the reference's value head (train.py's lambda, and lambda 1: the
    return less the critic's value; the step's first action token, before whitening) and mc_advantages from k
    re-rollouts per visited state (--advantage=mc), each against the exact A^ref of envs.SoftSolution; the state
    values too, against the exact V^ref. Pearson, with 95% bootstrap intervals over tasks, and the slope of each
    estimate on the truth; "by_kind": each advantage estimator within each kind of step (envs.step_kind), which
    decisions it knows. overrides: config.Config fields (actions). Returns the dict it prints."""
    cfg, enc, ref = experiments.reference(ref_path, device, **overrides)
    agent = agents.make_agent(cfg, ref, ref, enc)
    cache_dir = cache_dir or optimum.default_cache_dir(ref_path)
    cache = optimum.optimum_cache(ref_path, cfg.temperature, max_steps, cache_dir, agent.constrained)
    gen, rows = torch.Generator().manual_seed(seed), []
    for t in range(n_tasks):
        sol = envs.make_env(cfg.env, "valid", t, 0, max_steps).soft_solution(
            optimum.reference_probs(agent, cache(t)), cfg.beta)
        eps = agents.rollout(agent, [envs.make_env(cfg.env, "valid", t, s, max_steps) for s in range(n_samples)],
                        generator=gen, keep_states=True)
        steps = [st for ep in eps for st in ep.steps]
        row = dict(task=t, aref=[sol.ref_advantage(st.env.state, st.text) for st in steps],
                   vref=[sol.ref_v(st.env.state) for st in steps], critic=[float(st.values[0]) for st in steps],
                   kind=[envs.step_kind(st.text, st.env.actions()) for st in steps])
        lp, _, v, r, mask = train.episode_tensors(eps, cfg.beta)
        starts = [sum(len(x.action) for x in ep.steps[:i]) for ep in eps for i in range(len(ep.steps))]
        for key, lam in (("gae", cfg.lam), ("gae_lam1", 1.0)):  # lambda 1: the return less the critic's value
            adv, _ = train.gae(r, v, mask, cfg.gamma, lam)
            row[key] = [float(adv[e, j]) for e, j in zip([e for e, ep in enumerate(eps) for _ in ep.steps], starts)]
        for k in ks:
            vals = agents.mc_state_values(agent, eps, k, gen, cfg.beta, seed=10**6 * (t + 1) + 10**4 * k)
            row[f"mc{k}"] = [float(a[0]) for per_ep in ppo_variants.mc_advantages(eps, vals, cfg.beta) for a in per_ep]
            row[f"v_mc{k}"] = [v for per_ep in vals for v in per_ep]
        rows.append(row)
        print(f"[estimates] task {t}: {len(steps)} steps, " + ", ".join(
            f"{k} {optimum.pearson(row[k], row['aref']):+.2f}" for k in ["gae"] + [f"mc{k}" for k in ks]))
    cat = lambda key, idx=range(n_tasks): [x for i in idx for x in rows[i][key]]
    corr = lambda key, target: dict(pearson=optimum.pearson(cat(key), cat(target)), ci=pa.bootstrap_ci(
        np.arange(n_tasks), lambda idx: optimum.pearson(cat(key, idx), cat(target, idx)), n_boot=300),
        slope=slope(cat(key), cat(target)))
    out = dict(ref=ref_path, n_tasks=n_tasks, n_samples=n_samples, steps=len(cat("aref")),
               advantage={k: corr(k, "aref") for k in ["gae", "gae_lam1"] + [f"mc{k}" for k in ks]},
               value={k: corr(k, "vref") for k in ["critic"] + [f"v_mc{k}" for k in ks]})
    kinds, aref = np.array(cat("kind")), np.array(cat("aref"))
    est = {e: np.array(cat(e)) for e in out["advantage"]}
    within = lambda m: dict(steps=int(m.sum()), aref_sd=float(aref[m].std()), **{
        e: dict(pearson=optimum.pearson(x[m], aref[m]), slope=slope(x[m], aref[m])) for e, x in est.items()})
    out["by_kind"] = {k: within(m) for k, m in optimum.kind_masks(kinds).items()}
    for what, d in (("A^ref", out["advantage"]), ("V^ref", out["value"])):
        print(f"[estimates] Pearson with the exact {what} on {out['steps']} steps (slope on it): " + ", ".join(
            f"{k} {x['pearson']:+.3f} [{x['ci'][0]:+.2f}, {x['ci'][1]:+.2f}] ({x['slope']:+.2f})" for k, x in d.items()))
    for kind, b in out["by_kind"].items():
        print(f"[estimates] within {kind} steps ({b['steps']}, A^ref sd {b['aref_sd']:.2f}): " + ", ".join(
            f"{e} {b[e]['pearson']:+.2f} ({b[e]['slope']:+.2f})" for e in out["advantage"]))
    return out


def slope(estimate, truth):
    """The least-squares slope of an estimate on the truth, cov / var(truth): how much of a true difference reaches
    the estimate on average. An advantage estimate with slope c < 1 moves PPO's fixed point from the optimum at
    beta to the optimum at beta / c, a shorter step in the right direction; noise alone leaves the slope at 1."""
    x, y = np.asarray(truth, float), np.asarray(estimate, float)
    return float(((x - x.mean()) * (y - y.mean())).mean() / x.var()) if len(x) > 1 and x.var() > 0 else math.nan


def cross_scores(sampler_path, scorer_paths, n_tasks=16, n_samples=8, device="cpu", seed=0, max_steps=None,
                 cache_dir=None):
    """PA read on another policy's samples: the failure AUROC of the summed PA of each policy in scorer_paths
    (against the shared reference), and of their mean, on n_samples episodes per validation task of sampler_path's
    policy, next to the sampler's own PA and to the exact pi_1's (the optimum check's cached reference scores). A
    policy's own samples pick the actions whose log-ratio it overestimates (LOG.md); independently trained
    scorers' errors do not follow the sampling. Each step's log-ratio, by the sampler and by each scorer, is also
    set against pi*'s at that step (Pearson over every sampled step, as the optimum check's): the same steps read
    by a network that did not choose them. Returns the AUROCs, the Pearsons, the success rate and every episode's
    scores."""
    run_ = agents.load_run(sampler_path, None, device, seed=seed)
    others = [agents.load_agent(p, None, device)[0] for p in scorer_paths]
    agent, beta = run_.ppo, run_.ppo.beta
    cache = optimum.optimum_cache(run_.ref_path, agent.temperature, max_steps,
                                  cache_dir or optimum.default_cache_dir(run_.ref_path), agent.constrained)
    scores = dict(own=[], pi_1=[], success=[], **{p: [] for p in scorer_paths})
    steps = dict(own=[], optimum=[], **{p: [] for p in scorer_paths})  # per-step log-ratios
    for t in range(n_tasks):
        sol = envs.make_env(run_.env_name, "valid", t, 0, max_steps).soft_solution(
            optimum.reference_probs(agent, cache(t)), beta)
        eps = agents.rollout(agent, [envs.make_env(run_.env_name, "valid", t, s, max_steps) for s in range(n_samples)],
                        generator=run_.gen, keep_states=True)
        for ep in eps:
            for path, other in zip(scorer_paths, others):
                rows = other.score([st.prompt for st in ep.steps], [st.action for st in ep.steps], ("policy", "ref"),
                                   [st.choices for st in ep.steps] if other.constrained else None)
                steps[path] += [float((r["logprobs"] - r["ref_logprobs"]).sum()) for r in rows]
                scores[path].append(beta * sum(steps[path][-len(rows):]))
            steps["own"] += [st.log_ratio for st in ep.steps]
            steps["optimum"] += [sol.log_ratio(st.env.state, st.text) for st in ep.steps]
            scores["own"].append(beta * sum(st.log_ratio for st in ep.steps))
            scores["pi_1"].append(beta * sum(sol.improved_log_ratio(st.env.state, st.text) for st in ep.steps))
            scores["success"].append(ep.success)
    scores["mean of the scorers"] = list(np.mean([scores[p] for p in scorer_paths], axis=0))
    steps["mean of the scorers"] = list(np.mean([steps[p] for p in scorer_paths], axis=0))
    opt = steps.pop("optimum")
    out = dict(auroc={k: pa.auroc(x, scores["success"]) for k, x in scores.items() if k != "success"},
               pearson={k: optimum.pearson(x, opt) for k, x in steps.items()},
               success=float(np.mean(scores["success"])), scores=scores, steps=dict(steps, optimum=opt))
    print(f"[cross] {len(scores['success'])} episodes of {sampler_path} ({100 * out['success']:.1f}% success), failure "
          f"AUROC of their summed PA: " + ", ".join(f"{k} {v:.3f}" for k, v in out["auroc"].items()))
    print(f"[cross] their {len(opt)} steps' log-ratio vs pi*'s, Pearson: "
          + ", ".join(f"{k} {v:+.3f}" for k, v in out["pearson"].items()))
    return out


def soup(paths, out_path, scale=1.0, ref_path=None, moved=()):
    """Average the weights of PPO runs made from one reference with different seeds into one checkpoint (a
    "seed soup"; weight averaging of fine-tuned runs that share their start: Wortsman et al. 2022, arXiv
    2203.05482; of RL runs: Rame et al. 2024, arXiv 2406.16768). Each run's log-ratio is a shared signal plus
    its seed's noise, so the average keeps the first and shrinks the second. The soup is an evaluation-only
    checkpoint (no optimizer, RNG or separate critic); put a copy of the runs' ref.pt beside it for the optimum
    check. That the runs share one reference is left to the caller.
    scale != 1 then moves the average from the reference (ref_path) along its own direction, weight by weight:
    ref + scale * (soup - ref) (pa.merge_weights past 1; "model extrapolation", Zheng et al. 2024, arXiv
    2404.16792). An average of runs that wander in different directions lies closer to the reference than any of
    them; this asks whether its direction, taken further, is the optimum's. One checkpoint is enough then.
    moved (parts of weight names, say ("wte", "wpe", "lm_head") or (".h.0.", ".h.1.")): only the weights whose
    name holds one of them are the soup's, the rest the reference's (ref_path): which weights carry the step and
    which its noise. One checkpoint is enough then too."""
    alone = scale != 1 or moved
    if len(paths) < (1 if alone else 2):
        raise checkpoint.CheckpointError("--soup needs at least two checkpoints (one, with --scale or --moved)")
    if alone and not ref_path:
        raise checkpoint.CheckpointError("--scale and --moved take weights from the reference: give --ref")
    avg, keep = checkpoint.soup(paths)
    if alone:
        ref = checkpoint.load(ref_path, env_name=keep["env_name"], tokenizer_spec=keep["tokenizer"])
        if sorted(ref["model"]) != sorted(avg) or ref["config"] != keep["config"]:
            raise checkpoint.CheckpointError(f"{ref_path} is not a reference of the shape of {paths[0]}")
        avg = pa.merge_weights(ref["model"], avg, scale) if scale != 1 else avg
    if moved:
        unmatched = [part for part in moved if not any(part in k for k in avg)]
        if unmatched:
            raise checkpoint.CheckpointError(f"--moved {','.join(unmatched)} names no weight; the weights: "
                                             f"{', '.join(avg)}")
        avg = {k: v if any(part in k for part in moved) else ref["model"][k] for k, v in avg.items()}
    checkpoint.save(out_path, dict(keep, model=avg, stage="soup", soup_of=[os.path.abspath(p) for p in paths],
                                     scale=scale, moved=list(moved)))
    what = f"the average of {len(paths)} runs' weights" if len(paths) > 1 else "one run's weights"
    print(f"[soup] {what}" + (f", moved {scale:g} times as far from the reference" if scale != 1 else "")
          + (f", only the weights named {','.join(moved)} (the rest the reference's)" if moved else "") + f" -> {out_path}")


def main(argv):
    p = argparse.ArgumentParser(description="Why the network's PPO misses the exact optimum of its objective, on "
                                "validation tasks (choose one of --kl_split, --few_tasks, --estimates, --improve, "
                                "--cross, --soup; the tabular runs are tabular.py).")
    p.add_argument("--iters", type=int, default=30, help="with --few_tasks: PPO iterations")
    p.add_argument("--ckpt", default=None, help="with --kl_split: the trained PPO checkpoint to look at")
    p.add_argument("--kl_split", type=int, default=0, help="where the checkpoint's KL goes, on N validation tasks")
    p.add_argument("--estimates", type=int, default=0, help="how well GAE and Monte Carlo re-rollouts know the "
                   "reference's own advantage on N validation tasks (with --ref)")
    p.add_argument("--improve", type=int, default=0, help="one round of soft policy improvement from Monte Carlo "
                   "estimates on N episodes of the reference (--ref), distilled into the network, then the optimum check")
    p.add_argument("--loss", default="regression", choices=("ce", "regression"), help="with --improve: how the "
                   "network learns the improved policy (experiments.improve)")
    p.add_argument("--epochs", type=int, default=4, help="with --improve: passes over the states")
    p.add_argument("--lr", type=float, default=1e-3, help="with --improve, or --few_tasks --start optimum: the "
                   "learning rate of the fit or the distillation")
    p.add_argument("--cross", default=None, metavar="SCORERS", help="with --ckpt: PA by these other policies' "
                   "checkpoints (comma-separated) on --ckpt's samples of 16 validation tasks (diagnose.cross_scores)")
    p.add_argument("--soup", default=None, metavar="RUNS", help="average these PPO checkpoints' weights "
                   "(comma-separated, one reference) into --out (diagnose.soup)")
    p.add_argument("--out", default=None, help="with --soup: the averaged checkpoint's path")
    p.add_argument("--scale", type=float, default=1.0, help="with --soup: move the average this many times as far "
                   "from the reference --ref (ref + scale * (soup - ref)); one checkpoint is enough then")
    p.add_argument("--moved", default="", help="with --soup: only the weights whose names hold one of these "
                   "comma-separated parts (say wte,wpe,lm_head) are the soup's, the rest --ref's")
    p.add_argument("--few_tasks", type=int, default=0, help="PPO from --ref on N validation tasks only, then the "
                                                             "optimum check on them")
    p.add_argument("--advantages", default="gae", choices=("gae", "exact"), help="with --few_tasks: GAE's "
                   "advantages or the optimum's exact ones")
    p.add_argument("--start", default="reference", choices=("reference", "optimum"), help="with --few_tasks: PPO "
                   "starts from the reference, or from pi* distilled into the network (the stationarity test)")
    p.add_argument("--distil_rounds", type=int, default=10, help="with --start optimum: rounds of distillation")
    p.add_argument("--distil_loss", default="ce", choices=("ce", "ratio"), help="with --start optimum: match pi*'s "
                   "probabilities (ce) or its log-ratio on every available action (ratio); with --iters 0 the check "
                   "scores the distilled network itself")
    p.add_argument("--distil_from", type=int, default=0, help="with --start optimum: distil on validation tasks "
                   "K .. K + N - 1 (K >= N: none of the N checked ones)")
    p.add_argument("--distil_tasks", type=int, default=None, help="with --start optimum: distil on this many "
                   "validation tasks from --distil_from on (default: the --few_tasks N)")
    p.add_argument("--train_from", type=int, default=0, help="with --few_tasks: PPO trains on validation tasks "
                   "from this one on (>= N: none of the checked ones)")
    p.add_argument("--train_tasks", type=int, default=None, help="with --few_tasks: PPO trains on this many "
                   "validation tasks from --train_from on (default: the --few_tasks N)")
    p.add_argument("--beta", type=float, default=None, help="with --few_tasks: the KL coefficient of PPO and of the "
                   "optimum (default: the reference's)")
    p.add_argument("--critic_warmup", type=int, default=0, help="with --few_tasks: iterations that fit only the "
                   "critic before PPO")
    p.add_argument("--average_from", type=int, default=0, help="with --few_tasks: check the running mean of the "
                   "weights from this iteration on (train.py --average_from), not the last iterate")
    p.add_argument("--anneal_lr", action="store_true", help="with --few_tasks: the learning rate falls linearly "
                   "to zero over the iterations (train.py --anneal_lr)")
    p.add_argument("--critic", default="shared", choices=("shared", "separate"), help="with --few_tasks: the "
                   "policy's own value head, or a critic network of its own (train.py --critic)")
    p.add_argument("--actions", default=None, choices=("any", "available"), help="with --few_tasks, --improve or "
                   "--estimates: any text, or sample only available actions (train.py --actions; default: as the "
                   "reference was trained)")
    p.add_argument("--seed", type=int, default=0, help="with --few_tasks: the seed of its sampling and minibatches")
    p.add_argument("--ref", default="out/ref.pt", help="with --few_tasks: the reference to start from")
    p.add_argument("--out_dir", default="out/few_tasks", help="with --few_tasks: where its ppo.pt and logs go "
                   "(the reference's scores are cached in optimum_cache/ beside --ref)")
    args = p.parse_args(argv)
    acts = {} if args.actions is None else dict(actions=args.actions)  # else as the reference was trained
    if not (args.kl_split or args.few_tasks or args.estimates or args.improve or args.cross or args.soup):
        p.error("choose one of --kl_split N, --few_tasks N, --estimates N, --improve N, --cross A,B, --soup A,B "
                "(the tabular PPO runs are `python tabular.py`)")
    if (args.out or args.moved) and not args.soup:
        p.error("--out and --moved belong to --soup (the other modes write to --out_dir)")
    if args.soup:
        if not args.out:
            p.error("--soup needs --out PATH for the averaged checkpoint")
        try:
            moved = tuple(filter(None, args.moved.split(",")))
            soup(args.soup.split(","), args.out, args.scale, args.ref if args.scale != 1 or moved else None, moved)
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"diagnose.py: {e}")
        return
    if args.estimates:
        if not 1 <= args.estimates <= envs.N_TASKS["valid"]:
            p.error(f"--estimates takes 1 to {envs.N_TASKS['valid']} tasks, not {args.estimates}")
        try:
            out = estimates(args.ref, args.estimates, seed=args.seed, **acts)
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"diagnose.py: {e}")
        with open(os.path.join(os.path.dirname(os.path.abspath(args.ref)), "estimates.json"), "w") as f:
            json.dump(out, f, indent=1)
        return
    if args.cross:
        try:
            cross_scores(args.ckpt or checkpoint.policy_path("out"), args.cross.split(","), seed=args.seed)
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"diagnose.py: {e}")
        return
    if args.improve:
        try:
            experiments.improve(args.ref, args.out_dir, args.improve, loss=args.loss, epochs=args.epochs, lr=args.lr,
                                seed=args.seed, **acts)
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"diagnose.py: {e}")
        return
    if args.few_tasks:
        if args.distil_rounds < 1 or args.critic_warmup < 0 or args.iters < (0 if args.start == "optimum" else 1):
            p.error("--distil_rounds and --iters must be at least 1 (--iters 0 with --start optimum) and "
                    "--critic_warmup at least 0")
        if args.beta is not None and not args.beta > 0:
            p.error(f"--beta must be positive, not {args.beta}")
        if args.average_from and not 1 <= args.average_from < args.critic_warmup + args.iters:
            p.error(f"--average_from takes 0 (the last iterate) or an iteration from 1 to "
                    f"{args.critic_warmup + args.iters - 1}, not {args.average_from}")
        if not 1 <= args.few_tasks <= envs.N_TASKS["valid"]:
            p.error(f"--few_tasks takes 1 to {envs.N_TASKS['valid']} tasks, not {args.few_tasks}")
        for name in ("distil", "train"):  # the tasks distilled on, and those PPO trains on, must exist
            first, count = getattr(args, f"{name}_from"), getattr(args, f"{name}_tasks")
            used = count or args.few_tasks
            last = envs.N_TASKS["valid"] - used
            if count is not None and count < 1:
                p.error(f"--{name}_tasks must be at least 1, not {count}")
            if not 0 <= first <= last:
                p.error(f"--{name}_from takes 0 to {last} when {used} tasks are used, not {first}")
        try:
            experiments.few_tasks(
                args.ref, args.out_dir, args.few_tasks, iters=args.iters, advantages=args.advantages,
                start=args.start, distil_rounds=args.distil_rounds, distil_loss=args.distil_loss,
                distil_from=args.distil_from, distil_tasks=args.distil_tasks, train_from=args.train_from,
                train_tasks=args.train_tasks, distil_lr=args.lr, critic_warmup=args.critic_warmup, critic=args.critic,
                **acts, average_from=args.average_from, anneal_lr=args.anneal_lr, seed=args.seed,
                **({} if args.beta is None else dict(beta=args.beta)))
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"diagnose.py: {e}")
        return
    if args.kl_split:
        try:
            out = kl_split(args.ckpt or checkpoint.policy_path("out"), args.kl_split)
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"diagnose.py: {e}")
        kinds = sorted(out["kl_per_episode"].items(), key=lambda kv: -abs(kv[1]))
        print(f"{out['env']}, {out['episodes']} sampled episodes: KL per episode by kind of step: "
              + ", ".join(f"{k} {v:+.2f}" for k, v in kinds))
        print(f"over every available action of {out['states']} visited states: Spearman(log pi/pi_ref, log pi_ref) "
              f"{out['spearman_logratio_vs_ref_logprob']:+.2f}, Spearman(log pi/pi_ref, A*) "
              f"{out['spearman_logratio_vs_astar']:+.2f}; the argmax moved in {100 * out['argmax_moved']:.0f}%")
        return


if __name__ == "__main__":
    main(sys.argv[1:])
