"""
prm.py: which reference makes PA best, and how far PA is from process reward models trained for the job.

Every row of the table scores each step of the SAME sampled episodes of the PPO policy:

    pa               beta * log(pi / pi_ref)     the RL stage's own reference (every other PA number here)
    pa@ref_early     beta * log(pi / pi_early)   behaviour cloning stopped at a tenth of its steps: a "base"
                                                 model that knows the format but not the task well
    pa@merge_<a>     beta * log(pi / pi_a)       pi_a = ref + a * (policy - ref), weight by weight
    implicit_prm     beta * log(pi_phi / pi_ref) pi_phi: the reference trained on episode outcomes with a
                                                 cross-entropy loss (Yuan et al. 2024); no step labels
    supervised_prm   a copy of the reference whose value head learnt the oracle's A*(s, a) of each step:
                     labels that no real user has, an upper reference rather than a baseline
    logprob, value_td, random, oracle            as in the report

The merges and both reward models come from `python train.py --stage=prm`, which calls train_prms below; the early
reference comes from stage 1. A row whose checkpoint is missing is left out. Each row's aggregation (sum, mean,
min, last) is chosen on validation episodes, then the test episodes are measured once. Columns: best-of-8 success,
failure AUROC of one sampled episode per task, Spearman of step scores with A*, attribution accuracy (argmin of
the running sum against the oracle's first critical mistake), and the extra training each scorer needed.

    python train.py --stage=prm               # train the two reward models, save the merges, write the table
    python prm.py --ckpt out/ppo_avg.pt           # the table again from the saved checkpoints
"""
import os
import random
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import agents
import checkpoint
import envs
import model as M
import pa
import report
import search as S
import tokenizer

N_SAMPLES = 8  # sampled episodes per task: best-of-8
N_ATTRIBUTION = 4  # failed samples among the first 4 of each task are attributed (as in report.py)


def scorers(folder, run_):
    """The extra networks of a run folder, as {row name: (kind, net, checkpoint)}: kind "ref" = a reference
    for PA, "implicit" = pi_phi, "supervised" = a step-labelled value head. Missing files are skipped;
    a file of another world or tokenizer is refused (checkpoint.CheckpointError)."""
    names = [("pa@ref_early", "ref_early.pt", "ref")]
    names += [(f"pa@{f[:-3]}", f, "ref") for f in sorted(os.listdir(folder)) if f.startswith("merge_") and f.endswith(".pt")]
    names += [("implicit_prm", "implicit_prm.pt", "implicit"), ("supervised_prm", "supervised_prm.pt", "supervised")]
    out, spec = {}, tokenizer.tokenizer_spec(run_.ppo.enc)
    for name, f, kind in names:
        path = os.path.join(folder, f)
        if os.path.exists(path):
            ck = checkpoint.load(path, env_name=run_.env_name, tokenizer_spec=spec)
            out[name] = (kind, checkpoint.net_of(ck, run_.ppo.device).eval(), ck)
    return out


def action_logprobs(agent, net, steps):
    """log net(a|s) of each step's whole action, teacher-forced at the agent's temperature. -> list of floats"""
    rows = agent.like(net, net).score([s.prompt for s in steps], [s.action for s in steps], ("policy",),
                                      [s.choices for s in steps])
    return [float(r["logprobs"].sum()) for r in rows]


def end_values(agent, net, steps):
    """net's value head at the last token of each step's action (model.GPT.value_at). -> list of floats"""
    out = []
    for c in range(0, len(steps), agent.batch_size):
        chunk = steps[c:c + agent.batch_size]
        idx, _ = M.pack([s.prompt for s in chunk], [s.action for s in chunk], agent.pad)
        last = torch.tensor([len(s.prompt) + len(s.action) - 1 for s in chunk])
        with torch.no_grad(), M.autocast_ctx(agent.device):
            out += net.value_at(idx.to(agent.device), last).float().cpu().tolist()
    return out


def step_table(agent, extra, episodes, rng):
    """{row name: per-episode lists of step scores} for the built-in selectors and every extra network."""
    beta, steps = agent.beta, [s for ep in episodes for s in ep.steps]
    flat = {}
    log_pi = [float(s.logprobs.sum()) for s in steps]
    log_ref = [float(s.ref_logprobs.sum()) for s in steps]
    for name, (kind, net, _) in extra.items():
        if kind == "ref":
            flat[name] = [beta * (a - b) for a, b in zip(log_pi, action_logprobs(agent, net, steps))]
        elif kind == "implicit":
            flat[name] = [beta * (a - b) for a, b in zip(action_logprobs(agent, net, steps), log_ref)]
        else:
            flat[name] = end_values(agent, net, steps)
    def per_episode(xs):  # cut a flat list of step scores back into episodes
        it = iter(xs)
        return [[next(it) for _ in ep.steps] for ep in episodes]
    out = {"pa": [S.step_scores(ep, "pa", beta) for ep in episodes]}
    out.update({name: per_episode(xs) for name, xs in flat.items()})
    out.update({sel: [S.step_scores(ep, sel, beta, rng) for ep in episodes]
                for sel in ("logprob", "value_td", "random", "oracle")})
    return out


def traj_score(name, ep, steps, how, rng, for_bon):
    """One number per episode, as report.py does: the oracle's best-of-N uses the verified outcome (Pass@N),
    its failure score its A* aggregated like any step score; random draws once per trajectory."""
    if name == "oracle":
        return ep.reward if for_bon else pa.aggregate(steps, how)
    if name == "random":
        return rng.random()
    return pa.aggregate(steps, how)


def _groups(xs):
    return [xs[i:i + N_SAMPLES] for i in range(0, len(xs), N_SAMPLES)]


def choose(table, episodes, rng):
    """Each row's aggregation for best-of-8 and for failure prediction, chosen on validation episodes."""
    groups, firsts = _groups(episodes), episodes[::N_SAMPLES]
    out = {}
    for name, per_ep in table.items():
        g_scores, f_scores = _groups(per_ep), per_ep[::N_SAMPLES]

        def bon8(how):
            sc = [[traj_score(name, e, s, how, rng, True) for e, s in zip(g, gs)] for g, gs in zip(groups, g_scores)]
            return S.best_of_n(groups, sc, [N_SAMPLES])[0][N_SAMPLES]

        def auc(how):
            return pa.auroc([traj_score(name, e, s, how, rng, False) for e, s in zip(firsts, f_scores)],
                            [e.success for e in firsts])
        (how_b, sb), (how_a, sa) = report.choose_how(bon8), report.choose_how(auc)
        out[name] = dict(bon=how_b, auroc=how_a, valid_bon8=sb[how_b], valid_auroc=sa[how_a])
    return out


def measure(table, episodes, how, rng):
    """The test metrics of every row with the aggregations chosen on validation."""
    groups, firsts = _groups(episodes), episodes[::N_SAMPLES]
    failed = [(i, e) for i, e in enumerate(episodes) if i % N_SAMPLES < N_ATTRIBUTION and not e.success]
    labelled = [(i, report.attribution_steps(e)) for i, e in failed]
    labelled = [(i, t) for i, t in labelled if t is not None]
    astar = [s.qstar - s.vstar for e in firsts for s in e.steps]
    rows = {}
    for name, per_ep in table.items():
        sc = [[traj_score(name, e, s, how[name]["bon"], rng, True) for e, s in zip(g, gs)]
              for g, gs in zip(groups, _groups(per_ep))]
        picked = [g[max(range(len(g)), key=lambda i: s[i])].success for g, s in zip(groups, sc)]
        fx = [traj_score(name, e, s, how[name]["auroc"], rng, False) for e, s in zip(firsts, per_ep[::N_SAMPLES])]
        labels = [e.success for e in firsts]
        preds = [pa.argmin_cumsum(per_ep[i]) for i, _ in labelled]
        rows[name] = dict(bon8=report.rate(picked), how_bon=how[name]["bon"], how_auroc=how[name]["auroc"],
                          valid_bon8=how[name]["valid_bon8"], valid_auroc=how[name]["valid_auroc"],
                          auroc=pa.auroc(fx, labels),
                          auroc_ci=pa.bootstrap_ci((np.array(fx), np.array(labels, dtype=float)), pa.auroc, n_boot=300),
                          spearman_astar=pa.spearman([v for s in per_ep[::N_SAMPLES] for v in s], astar),
                          attribution=pa.attribution_metrics(preds, [t for _, t in labelled])[0])
    mean8 = float(np.mean([e.success for e in episodes]))
    pass8 = float(np.mean([any(e.success for e in g) for g in groups]))
    return rows, dict(mean_at_8=mean8, pass_at_8=pass8, n_attribution=len(labelled),
                      n_failures=int(sum(not e.success for e in firsts)))


def compare(ppo_path, out_dir=None, device="auto", batch_size=256, n_valid=100, n_test=120, seed=0):
    """Write prm.json and prm.md (the table) beside the checkpoint, or into out_dir. Returns the dict."""
    folder = os.path.dirname(os.path.abspath(ppo_path))
    out_dir = out_dir or folder
    run_ = agents.load_run(ppo_path, None, device, batch_size, seed)
    extra, rng = scorers(folder, run_), random.Random(seed)
    agent = run_.ppo
    valid = run_.episodes(agent, "valid", range(n_valid), range(N_SAMPLES), read=False)  # step_table's scorers
    test = run_.episodes(agent, "test", range(n_test), range(N_SAMPLES), read=False)     # need no reading
    how = choose(step_table(agent, extra, valid, rng), valid, rng)
    rows, base = measure(step_table(agent, extra, test, rng), test, how, rng)
    for name, (kind, _, ck) in extra.items():
        rows[name].update(train_s=ck.get("seconds", 0.0) if kind != "ref" else 0.0, labels=ck.get("labels", "none"))
    P = dict(env=run_.env_name, beta=agent.beta, n_valid=n_valid, n_test=n_test, samples=N_SAMPLES, rows=rows,
             valid_mean_at_8=float(np.mean([e.success for e in valid])), **base)
    report.save_table(out_dir, "prm", P, table(P))
    return P


def table(P):
    f = report.fmt
    L = [f"## {P['env']}: step scorers on the PPO policy's samples ({P['n_test']} test tasks x {P['samples']}; "
         f"aggregations chosen on {P['n_valid']} validation tasks)", "",
         f"Mean@8 {f(P['mean_at_8'])}, Pass@8 {f(P['pass_at_8'])}; failure AUROC on one sample per task "
         f"({P['n_failures']} failures); attribution on {P['n_attribution']} failed samples with a critical mistake.", "",
         "| scorer | best-of-8 % [95% CI] | failure AUROC [95% CI] | aggregation (best-of-8 / AUROC) "
         "| Spearman(step, A*) | attribution acc | extra training |", "|---|---:|---:|---|---:|---:|---|"]
    refs = [n for n in P["rows"] if n.startswith("pa") and "valid_bon8" in P["rows"][n]]
    if refs:  # which reference to use is a choice: it is made here, on validation
        best = max(refs, key=lambda n: P["rows"][n]["valid_bon8"])
        L[2:2] = [f"On the {P['n_valid']} validation tasks, best-of-8 by PA under each reference: "
                  + ", ".join(f"{n} {f(P['rows'][n]['valid_bon8']).strip()}" for n in refs)
                  + f" (Mean@8 there {f(P['valid_mean_at_8']).strip()}): the choice is {best}.", ""]
    for name, r in P["rows"].items():
        b, ci = r["bon8"], r["auroc_ci"]
        cost = "none" if name in ("pa", "logprob", "random") or name.startswith("pa@") else \
            "critic (PPO's)" if name == "value_td" else "exact solver" if name == "oracle" else \
            f"{r['train_s']:.0f} s, {r['labels']}"
        how = "one draw" if name == "random" else f"{'outcome' if name == 'oracle' else r['how_bon']} / {r['how_auroc']}"
        L.append(f"| {name} | {f(b['rate'])} [{f(b['lo'])}, {f(b['hi'])}] | {f(r['auroc'])} [{f(ci[0])}, {f(ci[1])}] "
                 f"| {how} | {f(r['spearman_astar'])} | {f(r['attribution'])} | {cost} |")
    return L


# -----------------------------------------------------------------------------
# the merges and the two reward models (python train.py --stage=prm)

def training_episodes(cfg, enc, policy, ref):
    """Sampled episodes of the PPO policy on training tasks, the oracle's A* on every step: what both
    trained reward models learn from (the implicit one uses only each episode's outcome)."""
    rng = random.Random(cfg.seed + 7)
    env_list = [envs.make_env(cfg.env, "train", rng.randrange(10**9), rng.randrange(10**9))
                for _ in range(cfg.prm_episodes)]
    agent = agents.make_agent(cfg, policy.eval(), ref.eval(), enc)
    with tqdm(desc="prm rollouts", unit=" steps", leave=False) as bar:
        return agents.rollout(agent, env_list, generator=torch.Generator(device=cfg.device).manual_seed(cfg.seed + 7),
                         oracle=True, progress=bar)


def episode_logprobs(net, episodes, temperature, pad):
    """log net(trajectory) of each episode: the sum over its steps of log net(action | prompt), all steps in
    one differentiable batch. -> (E,) on net's device"""
    device = next(net.parameters()).device
    rows = [(j, s) for j, ep in enumerate(episodes) for s in ep.steps]
    idx, mask = M.pack([s.prompt for _, s in rows], [s.action for _, s in rows], pad)
    with M.autocast_ctx(device):
        lp, _, _ = net.evaluate(idx.to(device), temperature, action_mask=mask.to(device))
    step_lp = (lp * mask.to(device)).sum(-1)  # (S,) log net of each step's action
    owner = torch.tensor([j for j, _ in rows], device=device)
    return torch.zeros(len(episodes), device=device).index_add(0, owner, step_lp.float())


def train_implicit_prm(cfg, enc, ref, episodes):
    """pi_phi: a copy of the reference trained with pa.implicit_prm_loss on whole episodes and their outcome
    (success 1, failure 0), prm_epochs passes in minibatches of 32 episodes. No step labels."""
    phi = M.copy_net(ref)
    opt = torch.optim.AdamW(phi.parameters(), lr=cfg.prm_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 8)
    ref_seq = torch.tensor([sum(float(s.ref_logprobs.sum()) for s in ep.steps) for ep in episodes])
    labels = torch.tensor([float(ep.success) for ep in episodes])
    for epoch in range(cfg.prm_epochs):
        losses = []
        for chunk in torch.randperm(len(episodes), generator=gen).split(32):
            seq = episode_logprobs(phi, [episodes[i] for i in chunk.tolist()], cfg.temperature, tokenizer.pad_id(enc))
            loss = pa.implicit_prm_loss(seq - ref_seq[chunk].to(seq.device), labels[chunk].to(seq.device), cfg.beta)
            M.gradient_step(opt, phi, loss, cfg.max_grad_norm, "implicit prm loss")
            losses.append(loss.item())
        print(f"implicit prm epoch {epoch}: loss {np.mean(losses):.4f}")
    return phi.eval()


def train_supervised_prm(cfg, enc, ref, episodes):
    """A copy of the reference whose value head, read at the last token of an action (GPT.value_at), is
    regressed on the oracle's A*(s, a) = Q*(s, a) - V*(s) of that step: a step-labelled reward model, given
    labels that no real user has. prm_epochs passes in minibatches of 128 steps."""
    net, pad = M.copy_net(ref), tokenizer.pad_id(enc)
    device = next(net.parameters()).device
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.prm_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 9)
    steps = [s for ep in episodes for s in ep.steps]
    target = torch.tensor([s.qstar - s.vstar for s in steps])
    for epoch in range(cfg.prm_epochs):
        losses = []
        for chunk in torch.randperm(len(steps), generator=gen).split(128):
            rows = [steps[i] for i in chunk.tolist()]
            idx, _ = M.pack([s.prompt for s in rows], [s.action for s in rows], pad)
            last = torch.tensor([len(s.prompt) + len(s.action) - 1 for s in rows])
            with M.autocast_ctx(device):
                pred = net.value_at(idx.to(device), last)
            loss = 0.5 * ((pred - target[chunk].to(device)) ** 2).mean()
            M.gradient_step(opt, net, loss, cfg.max_grad_norm, "supervised prm loss")
            losses.append(loss.item())
        print(f"supervised prm epoch {epoch}: mse {2 * np.mean(losses):.4f}")
    return net.eval()


def train_prms(cfg, enc, ref, policy):
    """Save the weight merges (merge_<alpha>.pt), then collect the training episodes and train the implicit
    (implicit_prm.pt) and supervised (supervised_prm.pt) reward models. Each checkpoint records its extra
    training seconds and the labels it used. Returns {name: seconds}."""
    for a in [float(x) for x in cfg.merge_alphas.split(",")]:
        merged = M.copy_net(ref, pa.merge_weights(ref.state_dict(), policy.state_dict(), a))
        checkpoint.save_run(os.path.join(cfg.out_dir, f"merge_{a:g}.pt"), merged, cfg, enc, stage="merge", alpha=a,
                   seconds=0.0, labels="none")
    t0 = time.time()
    episodes = training_episodes(cfg, enc, policy, ref)
    t_roll = time.time() - t0
    times = {}
    for name, fn, labels in (("implicit_prm", train_implicit_prm, f"outcomes of {len(episodes)} episodes"),
                             ("supervised_prm", train_supervised_prm,
                              f"oracle A* of {sum(len(e.steps) for e in episodes)} steps")):
        t0 = time.time()
        net = fn(cfg, enc, ref, episodes)
        times[name] = round(t_roll + time.time() - t0, 1)  # each would need the rollouts on its own
        checkpoint.save_run(os.path.join(cfg.out_dir, f"{name}.pt"), net, cfg, enc, stage=name, seconds=times[name],
                   labels=labels)
        print(f"{name}: {times[name]} s (rollouts {t_roll:.0f} s), trained on {labels}")
    return times


def main(argv):
    report.table_main(argv, "prm.py", "PA under other references against trained process reward models (train them "
                      "first: python train.py --stage=prm).", compare, n_test=120)


if __name__ == "__main__":
    main(sys.argv[1:])
