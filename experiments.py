"""
experiments.py: the network's PPO, and fits, trained under controlled conditions on validation tasks whose
optimum pi* the optimum check solves exactly, each to answer one question (`python diagnose.py` runs them):

  few_tasks       train.py's PPO on a few tasks only, so that each state comes back often as in a table; with GAE's
                  advantages or pi*'s exact ones (exact_advantage): estimation or optimisation?
  distil_optimum  pi* put into the network, as the start of the stationarity test (few_tasks start="optimum"), or
                  its log-ratio taught directly: the network's ceiling as a process reward
  improve         one round of soft policy improvement from the reference, estimated by re-rollouts on training
                  tasks (improvement_data) and fitted: can the network learn pi_1, whose PA would already work?

Diagnostics, never recipes: each writes a checkpoint and the optimum check of it to its out_dir.
"""
import json
import math
import os
import time

import numpy as np
import torch

import agents
import checkpoint
import config
import envs
import model as M
import optimum
import ppo_variants
import tokenizer
import train


def exact_advantage(sol, step, beta):
    """The optimum's advantage of a sampled step, less its KL penalty: beta * (log pi*/pi_ref - log pi/pi_ref).
    Its expectation over pi's actions times grad log pi is -beta * grad KL(pi || pi*) at that state."""
    return beta * (sol.log_ratio(step.env.state, step.text) - step.log_ratio)


def distil_optimum(policy, agent, sols, cfg, tasks, rounds=10, episodes=64, lr=1e-3, batch=256, max_steps=None,
                   seed=0, loss="ce"):
    """Put pi* into the network, as the start of the stationarity test: on the states the network visits (its
    own samples of the validation tasks `tasks`, whose optima sols[task] holds, so they approach pi*'s as it
    learns: DAgger), one pass per round over every available action of those states. loss="ce": the
    cross-entropy of its probability of each action's tokens to pi*'s probability of that action, which hardly
    cares whether an action it avoids keeps 1e-3 or 1e-8 of its mass. loss="ratio": the squared error of its
    log-ratio log pi/pi_ref of each action to pi*'s, every action weighted alike, which is what PA reads (the
    network's ceiling as a process reward on these tasks), and of its log-prob of writing any other text (the
    no-op) to pi*'s; without that term the mass pushed off the bad actions leaks into invalid text. With "ce",
    pi*'s small mass on the no-op is not taught. Minibatches hold whole states. Returns the log of each round."""
    if loss not in ("ce", "ratio"):
        raise ValueError(f"loss: ce or ratio, not {loss!r}")
    if loss == "ratio" and agent.constrained:
        raise ValueError("loss='ratio' compares the network's own log-probs of the action texts with pi_ref's: "
                         "with --actions=any only (pass it to diagnose.py)")
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    gen, sample_gen = torch.Generator().manual_seed(seed + 3), torch.Generator().manual_seed(seed + 4)
    log = []
    for r in range(rounds):
        env_list = [envs.make_env(cfg.env, "valid", tasks[i % len(tasks)], 10**6 + r * episodes + i, max_steps)
                    for i in range(episodes)]
        policy.eval()
        eps = agents.rollout(agent, env_list, generator=sample_gen, keep_states=True)
        targets = {}  # each visited state once: its actions' rows and the no-op's log pi*(no-op | s)
        for ep in eps:
            for st in ep.steps:
                sol, state = sols[ep.task], st.env.state
                if (ep.task, state) not in targets:  # log pi*(a|s) = log pi_ref(a|s) + log pi*/pi_ref
                    terms = {a: math.log(p) + sol.log_ratio(state, a) for a, p in sol.ref_terms(state)}
                    targets[ep.task, state] = (  # (prompt, tokens, pi*(a|s), log pi*(a|s)) of each action
                        [(st.prompt, tokenizer.encode_action(agent.enc, a), math.exp(x), x)
                         for a, x in terms.items() if a != sol.invalid], terms.get(sol.invalid))
        chunks, size, per_state = [[]], 0, list(targets.values())  # minibatches of whole states, ~batch actions
        for i in torch.randperm(len(per_state), generator=gen).tolist():
            if size >= batch:
                chunks, size = chunks + [[]], 0
            chunks[-1].append(per_state[i])
            size += len(per_state[i][0])
        policy.train()
        losses = []
        for chunk in chunks:
            mb = [x for rows, _ in chunk for x in rows]
            idx, mask = M.pack([p for p, *_ in mb], [a for _, a, *_ in mb], agent.pad)
            lp, _, _ = policy.evaluate(idx, cfg.temperature, action_mask=mask)
            seq = (lp.float() * mask).sum(-1)  # log pi(a|s) of each action's text
            if loss == "ce":
                w = torch.tensor([x[2] for x in mb])
                value = -(w * seq).sum() / w.sum()  # cross-entropy per unit of pi*'s mass
            else:  # log pi - log pi* = (log pi/pi_ref) - (log pi*/pi_ref), squared, for each action and the no-op
                errs = [seq - torch.tensor([x[3] for x in mb])]
                on_actions = torch.stack([x.logsumexp(0) for x in seq.split([len(rows) for rows, _ in chunk])])
                noop = torch.log1p(-on_actions.exp().clamp(max=1 - 1e-6))  # log of the mass on any other text
                keep = [i for i, (_, t) in enumerate(chunk) if t is not None]
                errs.append(noop[keep] - torch.tensor([chunk[i][1] for i in keep]))
                value = (torch.cat(errs) ** 2).mean()
            M.gradient_step(opt, policy, value, cfg.max_grad_norm, "distillation loss")
            losses.append(value.item())
        steps = [(ep.task, st) for ep in eps for st in ep.steps]
        target = [sols[t].log_ratio(st.env.state, st.text) for t, st in steps]
        log.append(dict(round=r, success=float(np.mean([ep.success for ep in eps])), states=len(targets),
                        loss=float(np.mean(losses)),
                        pearson=optimum.pearson([st.log_ratio for _, st in steps], target)))
        print("distil | " + " | ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in log[-1].items()))
    return log


def reference(ref_path, device, **overrides):
    """(cfg, tokenizer, frozen reference network) of a saved reference; cfg is its training config with overrides."""
    ck = checkpoint.load(ref_path)
    cfg = config.Config(**{**ck["train_config"], "device": device, **overrides})
    enc = tokenizer.tokenizer_from_spec(ck["tokenizer"])
    ref, _ = checkpoint.load_run(ref_path, cfg, enc, device)
    return cfg, enc, ref.eval().requires_grad_(False)


def few_tasks(ref_path, out_dir, n_tasks=8, iters=20, episodes=128, advantages="gae", cache_dir=None,
              device="cpu", seed=0, max_steps=None, start="reference", distil_rounds=10, distil_lr=1e-3,
              distil_loss="ce", distil_from=0, distil_tasks=None, critic_warmup=0, train_from=0, train_tasks=None,
              average_from=0, **overrides):
    """The network version of the tabular question: train.py's PPO from the reference, on n_tasks validation
    tasks only (so that each state is visited often, as in a table), with GAE's advantages (advantages="gae")
    or with the exact ones of the optimum (advantages="exact": beta * (log pi*/pi_ref - log pi/pi_ref) of the
    sampled action, whose expected gradient is -beta * grad KL(pi || pi*) at each visited state, so that pi* is
    its fixed point). If "exact" reaches pi* and "gae" does not, what is missing is estimation (critic, GAE,
    samples); if neither does, it is the optimiser or the network. A diagnostic on validation tasks, never a
    recipe. Returns the per-iteration log; writes ppo.pt and then the optimum check on the same tasks to out_dir.
    start="optimum": the stationarity test. PPO starts from pi* distilled into the network (distil_optimum,
    distil_rounds rounds) instead of from the reference; if the log-ratio's correlation with pi*'s then decays
    under unchanged PPO, PPO's fixed point is not pi* (a bug or a mis-specified reward); if it holds, the
    trouble is getting there. distil_loss "ratio" fits pi*'s log-ratio instead of its probabilities, and with
    iters=0 the check scores the distilled network itself: how close this network gets to the optimum's process
    reward when it is taught it directly, on the very tasks it is checked on (a ceiling for any RL recipe).
    distil_from=k distils on validation tasks k .. k + n_tasks - 1 instead (k >= n_tasks: none of the checked ones,
    so the check says what the distilled process reward is worth on tasks it has not seen); distil_tasks, if given,
    replaces n_tasks there (the same rounds spread over more or fewer tasks).
    train_from=k, train_tasks=m: PPO trains on validation tasks k .. k + m - 1 instead (m defaults to n_tasks; with
    k >= n_tasks none of the checked ones), so that the check says what PPO learnt from a few tasks, each visited
    often, is worth on tasks it has not seen.
    critic_warmup: iterations that fit only the critic first (its head learned the reference's returns, not the
    distilled policy's); they are logged with critic_only.
    average_from=k (> 0): also keep the running mean of the weights from iteration k on (train.py --average_from),
    saved as ppo_avg.pt and checked instead of the last iterate; anneal_lr=True (an override): the learning rate
    falls linearly to zero over the iterations (train.py --anneal_lr). Either tells a noise floor of constant-size
    steps from a bias.
    max_steps (the episode budget) shrinks the worlds for tests; overrides: any config.Config field (ppo_lr, ...)."""
    if start not in ("reference", "optimum"):
        raise ValueError(f"start: reference or optimum, not {start!r}")
    if iters < (1 if start == "reference" else 0):
        raise ValueError(f"iters: at least 1 from the reference (0 is allowed from the optimum), not {iters}")
    if average_from and not 1 <= average_from < critic_warmup + iters:  # 0: the last iterate, always allowed
        raise ValueError(f"average_from: 0 (the last iterate) or an iteration from 1 to "
                         f"{critic_warmup + iters - 1}, not {average_from}")
    if advantages == "exact":  # pi*'s exact advantage holds the KL term: the exact KL's loss would count it twice
        overrides["kl"] = "sampled"  # (the sampled KL lives only in the reward, which these advantages replace)
    cfg, enc, ref = reference(ref_path, device, out_dir=out_dir, seed=seed, ppo_iters=iters,
                               episodes_per_iter=episodes, critic_warmup=critic_warmup, average_from=average_from,
                               **overrides)
    os.makedirs(out_dir, exist_ok=True)
    policy = train.build_model(cfg, enc)
    policy.load_state_dict(ref.state_dict())
    agent = agents.make_agent(cfg, policy, ref, enc)
    cache_dir = cache_dir or optimum.default_cache_dir(ref_path)
    cache = optimum.optimum_cache(ref_path, cfg.temperature, max_steps, cache_dir, agent.constrained)
    solve = lambda t: envs.make_env(cfg.env, "valid", t, 0, max_steps).soft_solution(
        optimum.reference_probs(agent, cache(t)), cfg.beta)
    span = lambda first, count: list(range(first, first + (count or n_tasks)))
    trained = span(train_from, train_tasks)
    sols = {t: solve(t) for t in sorted(set(range(n_tasks)) | set(trained))}  # validation task -> its optimum
    exact = lambda eps: [[exact_advantage(sols[ep.task], st, cfg.beta) for st in ep.steps] for ep in eps]
    log = []
    if start == "optimum":
        taught = span(distil_from, distil_tasks)
        sols.update({t: solve(t) for t in taught if t not in sols})
        log += distil_optimum(policy, agent, sols, cfg, taught, distil_rounds, lr=distil_lr, max_steps=max_steps,
                              seed=seed, loss=distil_loss)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.ppo_lr, weight_decay=0.0)
    critic, critic_opt = ppo_variants.separate_critic(cfg, ref)
    gen, sample_gen = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 2)
    avg = None
    for it in range(critic_warmup + iters):
        t0 = time.time()
        env_list = [envs.make_env(cfg.env, "valid", trained[i % len(trained)], it * episodes + i, max_steps)
                    for i in range(episodes)]
        policy.eval()
        eps = agents.rollout(agent, env_list, generator=sample_gen, keep_states=True)
        steps = [(ep.task, st) for ep in eps for st in ep.steps]
        mine = [st.log_ratio for _, st in steps]
        target = [sols[t].log_ratio(st.env.state, st.text) for t, st in steps]
        policy.train()
        train.set_lr(cfg, it, opt, critic_opt)
        stats = train.ppo_update(cfg, policy, opt, agent, eps, gen, exact if advantages == "exact" else None,
                                 critic_only=it < critic_warmup, critic=critic, critic_opt=critic_opt)
        log.append(dict(iter=it, critic_only=it < critic_warmup, success=float(np.mean([ep.success for ep in eps])),
                        kl=float(np.mean([sum(st.log_ratio for st in ep.steps) for ep in eps])),
                        pearson=optimum.pearson(mine, target), **stats, lr=train.lr_at(cfg, it),
                        seconds=round(time.time() - t0, 1),
                        tasks=f"{min(ep.task for ep in eps)}-{max(ep.task for ep in eps)}"))
        print(" | ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in log[-1].items()))
        n = train.averaged(cfg, it)
        if n:  # the running mean of the weights, as train.train_ppo keeps it
            avg = train.running_mean(avg, policy, n)
    last, avg_path = max(critic_warmup + iters - 1, 0), os.path.join(out_dir, "ppo_avg.pt")
    checkpoint.save_run(os.path.join(out_dir, "ppo.pt"), policy, cfg, enc, stage="ppo", iter=last)
    if avg is not None:
        checkpoint.save_run(avg_path, policy, cfg, enc, weights=avg, stage="ppo", iter=last,
                            averaged=train.averaged(cfg, last))
    elif os.path.exists(avg_path):  # an earlier run's mean in the same folder is not this run's policy
        os.remove(avg_path)
    optimum.optimum_check(avg_path if avg is not None else os.path.join(out_dir, "ppo.pt"), out_dir, ref_path,
                          device, n=n_tasks, max_steps=max_steps, cache_dir=cache_dir)
    with open(os.path.join(out_dir, "few_tasks_log.json"), "w") as f:
        json.dump(log, f)
    return log


def improvement_data(agent, cfg, episodes, k, seed, max_steps=None):
    """Monte Carlo estimates for one round of soft policy improvement from the reference (agent's policy): on every
    state of the reference's own episodes of new training tasks, Q^ref(s, a) of every available action and of the
    no-op (any other text; not for a constrained agent): the mean final reward of k reference rollouts after it,
    or its own reward where it ends the episode. Returns [(prompt, [action texts], [pi_ref of each], [Q of each],
    Q of the no-op)] per state."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    tasks = rng.integers(10**9, size=(episodes, 2))
    eps = agents.rollout(agent, [envs.make_env(cfg.env, "train", int(t), int(sd), max_steps) for t, sd in tasks],
                    generator=gen, keep_states=True)
    states = [st for ep in eps for st in ep.steps]
    noop = [] if agent.constrained else [envs.Env.invalid]  # a constrained reference writes no other text
    rows = [(i, a) for i, st in enumerate(states) for a in list(st.env.actions()) + noop]
    q, after, clones = {}, [], []  # Q of the rows that end the episode; the others' rollouts
    for j, (i, a) in enumerate(rows):
        c = states[i].env.clone()
        c.rng = np.random.default_rng([seed, j])
        _, r, done, _ = c.step(a)
        if done:
            q[i, a] = r
            continue
        after.append((i, a))
        for m in range(k):
            cc = c.clone()
            cc.rng = np.random.default_rng([seed, j, m + 1])
            clones.append(cc)
    outs = agents.rollout(agent, clones, generator=gen, fresh=False)
    for n, key in enumerate(after):
        q[key] = float(np.mean([o.reward for o in outs[n * k:(n + 1) * k]]))
    out = []
    for i, st in enumerate(states):
        acts = list(st.env.actions())
        scored = agent.score([st.prompt] * len(acts), [tokenizer.encode_action(agent.enc, a) for a in acts], ("ref",),
                             [tuple(acts)] * len(acts))
        out.append((st.prompt, acts, [math.exp(float(x["ref_logprobs"].sum())) for x in scored],
                    [q[i, a] for a in acts], q.get((i, envs.Env.invalid), 0.0)))
    return out


def improve(ref_path, out_dir, episodes=64, k=4, loss="regression", epochs=4, lr=1e-3, batch=32, device="cpu",
            seed=0, n_check=16, max_steps=None, cache_dir=None, actions=None):
    """One round of soft policy improvement, estimated and distilled: can the network learn pi_1 = pi_ref exp(A^ref /
    beta) / Z, whose PA predicts failure (LOG.md), from Monte Carlo estimates on training tasks
    (improvement_data, saved in out_dir and reused)? The network starts from the reference and learns, epochs
    passes over batches of states, either
      loss="ce": the cross-entropy of its probabilities of the available actions to pi_ref exp(Q / beta) / Z (the
        no-op in Z, not taught), or
      loss="regression": at each state, beta * log pi/pi_ref of each available action and of the no-op against Q,
        both centred over the state's actions (least squares: the noise of Q averages out, where exp(Q / beta)
        magnifies it).
    actions="available": both networks write only available actions (train.py --actions), so there is no no-op;
    None: as the reference was trained.
    Saved as out_dir/ppo.pt, then the optimum check on n_check validation tasks (it also reports the correlation
    with the exact pi_1). A diagnostic of what PA needs, not PPO. Returns the optimum check's pi_1 summary."""
    if loss not in ("ce", "regression"):
        raise ValueError(f"loss: ce or regression, not {loss!r}")
    cfg, enc, ref = reference(ref_path, device, out_dir=out_dir, seed=seed, **({} if actions is None else
                                                                                dict(actions=actions)))
    os.makedirs(out_dir, exist_ok=True)
    agent = agents.make_agent(cfg, ref, ref, enc)
    t0, gen = time.time(), torch.Generator().manual_seed(seed + 1)
    data_path = os.path.join(out_dir, f"improve_data-{episodes}-{k}-{seed}-{max_steps or 0}-{cfg.actions}.pt")
    if os.path.exists(data_path):
        data = torch.load(data_path)
    else:
        data = improvement_data(agent, cfg, episodes, k, seed, max_steps)
        torch.save(data, data_path)
    print(f"improve | {len(data)} states, {sum(len(d[1]) for d in data)} actions ({time.time() - t0:.0f} s)")
    policy = train.build_model(cfg, enc)
    policy.load_state_dict(ref.state_dict())
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    policy.train()
    for epoch in range(epochs):
        losses = []
        for chunk in torch.randperm(len(data), generator=gen).split(batch):
            mb = [data[i] for i in chunk.tolist()]
            prompts = [d[0] for d in mb for _ in d[1]]
            tokens = [tokenizer.encode_action(enc, a) for d in mb for a in d[1]]
            idx, mask = M.pack(prompts, tokens, agent.pad)
            choices = [tuple(d[1]) for d in mb for _ in d[1]]
            lp = (agent.evaluate(policy, idx, mask, choices, tokens)[0].float() * mask).sum(-1)
            terms, n = [], 0
            for _, acts, p_ref, q, q_noop in mb:
                mine, p_ref, q = lp[n:n + len(acts)], torch.tensor(p_ref), torch.tensor(q)
                n += len(acts)
                if loss == "ce":
                    lw = torch.log(torch.cat([p_ref, (1 - p_ref.sum()).clamp(min=1e-12)[None]])) + \
                        torch.cat([q, torch.tensor([q_noop])]) / cfg.beta
                    terms.append(-(torch.softmax(lw, 0)[:-1] * mine).sum())
                elif agent.constrained:  # the available actions are all there is
                    d = cfg.beta * (mine - torch.log(p_ref.clamp(min=1e-12))) - q
                    terms.append(((d - d.mean()) ** 2).mean())
                else:  # the no-op too, with what the available actions leave: else their mass drains into it
                    rest = torch.log(-torch.expm1(torch.logsumexp(mine, 0).clamp(max=-1e-6)))
                    d = cfg.beta * (torch.cat([mine, rest[None]]) - torch.log(torch.cat(
                        [p_ref, (1 - p_ref.sum())[None]]).clamp(min=1e-12))) - torch.cat([q, torch.tensor([q_noop])])
                    terms.append(((d - d.mean()) ** 2).mean())
            step_loss = torch.stack(terms).mean()
            M.gradient_step(opt, policy, step_loss, cfg.max_grad_norm, "improvement loss")
            losses.append(step_loss.item())
        print(f"improve | epoch {epoch} | {loss} loss {np.mean(losses):.5f}")
    path = os.path.join(out_dir, "ppo.pt")
    checkpoint.save_run(path, policy.eval(), cfg, enc, stage="ppo", iter=0)
    return optimum.optimum_check(path, out_dir, ref_path, device, n=n_check, max_steps=max_steps,
                                 cache_dir=cache_dir)["improved"]
