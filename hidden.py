"""
hidden.py: what a policy that reads only the prompt can know of the optimum, on a shop task it has not seen.

The optimum check (optimum.py) solves each validation task with the whole task in view. A shop task hides one fact
until an item page is opened: which of its three look-alike products (the target's title, a price under the cap)
are the two full matches and which one lacks the required colour or size. A policy trained on other tasks has
only the prompt, so the part of pi*'s log-ratio that rests on that fact is beyond it. Two readings:

    python hidden.py --ckpt out/ppo_avg.pt --tasks 16    # both, on the check's first 16 validation tasks (~2 min)
    python hidden.py --ckpt out/ppo_avg.pt --teach_items 600  # can the reference learn to read prices? (~7 min)
    python hidden.py --ckpt out/ppo_avg.pt --teach_items 2000 --labels rule --pages 0  # ... from fresh pages (~16 min)
    python hidden.py --ckpt out/ppo_avg.pt --teach_items 2000 --labels reward --pages 0  # ... its clicks' reward (~25 min)
    python hidden.py --ckpt out/ref.pt --ref out/ref.pt --price_reference price/ref.pt  # a reference that reads them

- The visible part of the optimum (visible_log_ratio). shop.twins gives the six tasks that permute the
  look-alikes' hidden payloads, and each is solved like the task itself. At each step the policy samples, pi*'s
  log-ratio is averaged over the twins whose prompt at that state is the task's (all six except on the item page
  of a look-alike): what the prompt says of it. The correlation of that average with pi*'s own log-ratio is an upper
  estimate of any prompt-only policy's (on an unseen task a policy knows less than "all but the hidden fact").
- Which items a network prefers (item_preferences): on the first results page after the expert's search, the
  probability it gives one item of each visible class (shop.visible_class), as a multiple of a uniform choice
  among the page's items. The over-the-cap item of the target's title is the one that the page does tell apart.
  teach_items clones the clicks on results pages alone into the reference (the expert's, or the price rule's on a
  new page for every row): a probe of whether the network can learn that comparison at all, and from how much;
  with labels="reward" it is told only the reward of each click it samples, at once and exactly (a bandit): a
  clearer signal of that decision than PPO's, which reaches the click several steps later, as a part of the
  purchase's reward, through an estimated advantage.
  price_reference writes a reference that has learnt it, for PPO to start from: does PPO then follow the optimum
  more closely?
"""
import argparse
import collections
import itertools
import math
import os
import random
import sys
import time

import numpy as np
import torch

import agents
import checkpoint
import envs
import experiments
import model as M
import optimum
import pa
import shop
import tokenizer
import train


BATCH = 64  # results pages per step of teach_items and price_reference


def first_results_page(split, task, seed):
    """A shop episode standing on the first results page after the expert's search (its list draw set by seed)."""
    env = envs.make_env("shop", split, task, seed=seed)
    env.step(envs.expert_action(env))
    return env


def _twin_solutions(agent, env, beta, cache):
    """[(task, its soft optimum)] for the task (first) and each of its twins. The task's states are scored as the
    optimum check scores them (from its cache, if there); a twin's new prompts (its item pages) once each."""
    probs_of, scored = optimum.reference_probs(agent, cache), {}

    def ref_probs(batch):
        if not scored:  # the task itself
            scored.update(zip([p for p, _ in batch], probs_of(batch)))
        new = [(p, acts) for p, acts in batch if p not in scored]
        scored.update(zip([p for p, _ in new], optimum.network_probs(agent, new)))
        return [scored[p] for p, _ in batch]

    sols = []
    for twin in shop.twins(env.task):
        e = envs.make_env("shop", "valid", env.task_id, seed=0, max_steps=env.max_steps)
        e.task = twin
        e.reset()
        sols.append((twin, e.soft_solution(ref_probs, beta)))
    return sols


def visible_log_ratio(run_, n_tasks=16, n_samples=8, max_steps=None, cache_dir=None):
    """On the first n_tasks validation shop tasks, n_samples episodes of the run's policy each: at every step the
    policy's log-ratio ("ppo"), pi*'s ("opt") and pi*'s averaged over the twins that render that state's prompt
    alike ("visible"), with the step's kind, the number of such twins, the task, and per episode beta times each
    summed and its success. Returns a dict of lists."""
    if run_.env_name != "shop":
        raise ValueError(f"the hidden fact is the shop's look-alike items, not a part of {run_.env_name!r}")
    agent, beta = run_.ppo, run_.ppo.beta
    cache = optimum.optimum_cache(run_.ref_path, agent.temperature, max_steps,
                                  cache_dir or optimum.default_cache_dir(run_.ref_path), agent.constrained)
    out = collections.defaultdict(list)
    for t in range(n_tasks):
        env = envs.make_env("shop", "valid", t, seed=0, max_steps=max_steps)
        sols = _twin_solutions(agent, env, beta, cache(t))
        sol, samples = sols[0][1], [envs.make_env("shop", "valid", t, seed=s, max_steps=max_steps)
                                    for s in range(n_samples)]
        for ep in agents.rollout(agent, samples, False, run_.gen, keep_states=True):
            sums = collections.Counter()
            for st in ep.steps:
                s, prompt = st.env.state, st.env.obs()
                alike = [x.log_ratio(s, st.text) for twin, x in sols
                         if s in x.pi_ref and envs.render(twin, s) == prompt]
                row = dict(ppo=st.log_ratio, opt=sol.log_ratio(s, st.text), visible=float(np.mean(alike)))
                for k, v in row.items():
                    out[k].append(v)
                    sums[k] += beta * v
                out["kind"].append(envs.step_kind(st.text, st.env.actions()))
                out["twins"].append(len(alike))
                out["task"].append(t)
            for k in ("ppo", "opt", "visible"):
                out["ep_" + k].append(sums[k])
            out["success"].append(ep.success)
            out["ep_task"].append(t)
    return dict(out)


def summarise(R, n_boot=300):
    """The readings of visible_log_ratio: Pearson of pi*'s log-ratio with its visible part (95% bootstrap over
    tasks), the policy's with each and with the hidden rest, per kind of step, and the failure AUROC of each sum."""
    ppo, opt, vis, task = (np.asarray(R[k]) for k in ("ppo", "opt", "visible", "task"))
    tasks = sorted(set(R["task"]))

    def ci(x, y):
        def fn(idx):
            m = np.isin(task, [tasks[i] for i in idx])
            return optimum.pearson(x[m], y[m])
        return [round(v, 3) for v in pa.bootstrap_ci(np.arange(len(tasks)), fn, n_boot=n_boot)]

    kinds = np.asarray(R["kind"])
    by_kind = {k: dict(steps=int((kinds == k).sum()), opt_visible=optimum.pearson(opt[kinds == k], vis[kinds == k]),
                       sd_opt=float(np.std(opt[kinds == k])), sd_hidden=float(np.std((opt - vis)[kinds == k])),
                       ppo_opt=optimum.pearson(ppo[kinds == k], opt[kinds == k]),
                       ppo_visible=optimum.pearson(ppo[kinds == k], vis[kinds == k])) for k in sorted(set(R["kind"]))}
    return dict(steps=len(ppo), episodes=len(R["success"]), success=float(np.mean(R["success"])),
                opt_visible=optimum.pearson(opt, vis), opt_visible_ci=ci(opt, vis), ppo_opt=optimum.pearson(ppo, opt),
                ppo_opt_ci=ci(ppo, opt), ppo_visible=optimum.pearson(ppo, vis), ppo_visible_ci=ci(ppo, vis),
                ppo_hidden=optimum.pearson(ppo, opt - vis), by_kind=by_kind,
                auroc={k: pa.auroc(R["ep_" + k], R["success"]) for k in ("opt", "visible", "ppo")})


def item_preferences(agent, model="policy", n_tasks=100, seeds=4, split="valid"):
    """On the first results page after the expert's search of n_tasks tasks x seeds list draws: the probability
    that `model` ("policy" or "ref") gives one item of each visible class, renormalised over the page's items and
    times their number (1: a uniform choice). Returns {class: (mean, items)}."""
    rows = []
    for t, s in itertools.product(range(n_tasks), range(seeds)):
        env = first_results_page(split, t, s)
        acts = env.actions()
        items = [a for a in acts if envs.step_kind(a, acts) == "item"]
        rows.append((env.obs(), acts, items, [shop.visible_class(env.task, a[6:-1]) for a in items]))
    lps = agent.action_logprobs([(agent.encode(o), acts) for o, acts, _, _ in rows], model)
    by = collections.defaultdict(list)
    for (_, acts, items, classes), lp in zip(rows, lps):
        lp = dict(zip(acts, lp.tolist()))
        x = np.array([lp[a] for a in items])
        p = np.exp(x - x.max())
        for c, q in zip(classes, p / p.sum() * len(items)):
            by[c].append(float(q))
    return {c: (float(np.mean(v)), len(v)) for c, v in sorted(by.items())}


def rule_page(split, task, seed):
    """A shop episode on the first results page of a search for the target's own title: the page the expert's search
    usually reaches, without solving the task (about 1 ms a page where first_results_page's expert takes tens)."""
    env = envs.make_env("shop", split, task, seed=seed)
    env.step(f"search[{shop.target_title(env.task)}]")
    return env


def price_rule(env):
    """What the prompt alone tells of the expert's click on a results page: the first item of the target's title
    under the cap, in display order, else the next page. (The expert also skips a look-alike that lacks an option,
    which only its item page shows.)"""
    acts = env.actions()
    under = [a for a in acts if under_the_cap(env, a, acts)]
    return under[0] if under else "click[next >]"


def under_the_cap(env, action, acts):
    """Whether action (one of acts, the page's available actions) opens an item of the target's title under the cap:
    what the price rule looks for."""
    return envs.step_kind(action, acts) == "item" and shop.visible_class(env.task, action[6:-1]) == "under the cap"


def price_reading(agent, model="ref", n_tasks=200, seeds=(7, 8), split="valid"):
    """On the rule pages (rule_page) of n_tasks x seeds tasks that show an item of the target's title over the cap
    (where the display order and the price rule can part): how often `model`'s most likely action is price_rule's,
    and how often it is an over-the-cap item. Returns (agreement, over the cap, pages); nan, nan, 0 if none."""
    rows = []
    for env in (rule_page(split, t, s) for t in range(n_tasks) for s in seeds):
        acts = env.actions()
        over = {a for a in acts if envs.step_kind(a, acts) == "item"
                and shop.visible_class(env.task, a[6:-1]) == "over the cap"}
        if over:
            rows.append((env, acts, over))
    if not rows:
        return math.nan, math.nan, 0
    lps = agent.action_logprobs([(agent.encode(env.obs()), acts) for env, acts, _ in rows], model)
    best = [acts[int(np.argmax(lp.tolist()))] for (_, acts, _), lp in zip(rows, lps)]
    return (float(np.mean([b == price_rule(env) for b, (env, _, _) in zip(best, rows)])),
            float(np.mean([b in over for b, (_, _, over) in zip(best, rows)])), len(rows))


def page_row(enc, env, action):
    """A cloning row (train.cloning_loss) of one results page: its prompt's ids, the action's ids, a return of 0 (the
    value head learns nothing here)."""
    return enc.encode_ordinary(env.obs()), tokenizer.encode_action(enc, action), 0.0


def bandit_loss(agent, pages, gen, baseline="batch"):
    """The item choice as a one-step bandit, on results pages: the reference samples one available action on each
    page at the agent's temperature and is told at once how good that click was, 1 for an item of the target's
    title under the cap (under_the_cap), else 0; never which click was right. REINFORCE on the constrained log-prob
    the click was drawn from, less a baseline: "batch", the mean reward of the batch's clicks (like a critic that
    cannot tell pages apart), or "page", each page's exact expected reward under the reference (a perfect critic).
    Returns (loss, mean reward)."""
    if baseline not in ("batch", "page"):
        raise ValueError(f"baseline: batch or page, not {baseline!r}")
    states = [(agent.encode(env.obs()), tuple(env.actions())) for env in pages]
    probs = [lp.float().exp() for lp in agent.action_logprobs(states, "ref")]
    rewards = [torch.tensor([float(under_the_cap(env, a, acts)) for a in acts])
               for env, (_, acts) in zip(pages, states)]
    chosen = [int(torch.multinomial(p, 1, generator=gen)) for p in probs]
    reward = torch.stack([r[i] for r, i in zip(rewards, chosen)])
    base = reward.mean() if baseline == "batch" else torch.stack([p @ r for p, r in zip(probs, rewards)])
    ids = [tokenizer.encode_action(agent.enc, acts[i]) for (_, acts), i in zip(states, chosen)]
    idx, mask = M.pack([prompt for prompt, _ in states], ids, agent.pad)
    idx, mask = idx.to(agent.device), mask.to(agent.device)
    with M.autocast_ctx(agent.device):
        logprobs = agent.evaluate(agent.ref, idx, mask, [acts for _, acts in states], ids)[0]
    per_page = (logprobs * mask).sum(1)  # log pi(click | page)
    return -((reward - base).to(agent.device) * per_page).mean(), reward.mean().item()


def teach_items(agent, pages=4000, steps=600, lr=1e-3, batch=BATCH, seed=0, labels="expert", baseline="batch",
                read_every=0, on_read=None):
    """A probe of what the reference network can learn, not a recipe: go on training agent.ref (in place) on one
    decision only, the click at the first results page of training tasks, and nothing else. labels="expert": clone
    the expert's click after its own search; "rule": clone price_rule's after a search for the target's title
    (what the prompt tells of it); "reward": on the rule's pages, learn from the reward of the reference's own
    clicks instead (bandit_loss with `baseline`; a reference that writes only available actions). pages: the
    training tasks drawn, each page seen many times; 0: a new page for every row, none seen twice, so that the
    network cannot learn pages by heart. If the network can read the price against the cap, this is the easiest way
    it could learn to (about a quarter of the expert's pages have the first plain item over the cap).
    on_read(step, losses), if given, is called every `read_every` steps. Returns the loss per step ("reward": the
    mean reward of each step's clicks)."""
    if labels not in ("expert", "rule", "reward"):
        raise ValueError(f"labels: expert, rule or reward, not {labels!r}")
    if labels == "reward" and not agent.constrained:
        raise ValueError("labels='reward' samples among the available actions: it needs a reference that writes "
                         "only those (--actions=available)")
    rng, enc, net = random.Random(seed), agent.enc, agent.ref

    def row():  # a new page: its cloning row, or the page itself for the bandit
        task, draw = rng.randrange(10**9), rng.randrange(10**9)
        env = first_results_page("train", task, draw) if labels == "expert" else rule_page("train", task, draw)
        if labels == "reward":
            return env
        return page_row(enc, env, envs.expert_action(env) if labels == "expert" else price_rule(env))

    rows = [row() for _ in range(pages)]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    gen, losses = torch.Generator().manual_seed(seed), []
    net.train()
    for step in range(steps):
        if pages:
            mb = [rows[i] for i in torch.randint(len(rows), (batch,), generator=gen).tolist()]
        else:
            mb = [row() for _ in range(batch)]
        if labels == "reward":
            loss, logged = bandit_loss(agent, mb, gen, baseline)
        else:
            loss, _ = train.cloning_loss(net, mb, tokenizer.pad_id(enc), agent.device)  # actions only
            logged = loss.item()
        M.gradient_step(opt, net, loss, 1.0, "item probe loss")
        losses.append(logged)
        if on_read and read_every and (step + 1) % read_every == 0 and step + 1 < steps:
            net.eval()
            on_read(step + 1, losses)
            net.train()
    net.eval()
    return losses


def price_reference(ref_path, out_path, steps=1500, batch=BATCH, seed=0, device="cpu", rule=True):
    """A diagnostic reference that reads the price against the cap, for PPO to start from: the reference's behaviour
    cloning continued for `steps` steps, each on `batch` rows of its own demonstrations (train.demonstrations, a new
    draw of its recipe) and `batch` new rule pages (price_rule's click), with train_sft's schedule of the learning
    rate. Not a recipe (the rule is not the expert, and the pages are far more than the default run's budget
    holds): it asks whether PPO follows the optimum more closely from a reference that can tell the items apart.
    Saved at out_path as a reference (`python train.py --stage=ppo --out_dir=DIR` with out_path = DIR/ref.pt).
    rule=False: the same cloning without the rule's pages, the control. Returns the per-step (demonstrations'
    cross-entropy, the rule's; nan without it)."""
    cfg, enc, net = experiments.reference(ref_path, device, seed=seed)
    net.requires_grad_(True)  # loaded frozen, as a reference is
    demos, rng, t0 = train.demonstrations(cfg, enc), random.Random(seed + 1), time.time()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.sft_lr, weight_decay=0.01)
    gen, pad, log = torch.Generator().manual_seed(seed + 2), tokenizer.pad_id(enc), []
    net.train()
    for it in range(steps):
        for g in opt.param_groups:
            g["lr"] = train.sft_lr(cfg, it, steps)
        ix = torch.randint(len(demos), (batch,), generator=gen).tolist()
        ce, v_loss = train.cloning_loss(net, [demos[i] for i in ix], pad, device)
        loss, rule_ce = ce + cfg.sft_vf_coef * v_loss, math.nan
        if rule:
            pages = [rule_page("train", rng.randrange(10**9), rng.randrange(10**9)) for _ in range(batch)]
            rows = [page_row(enc, env, price_rule(env)) for env in pages]
            rule_loss, _ = train.cloning_loss(net, rows, pad, device)
            loss, rule_ce = loss + rule_loss, rule_loss.item()
        M.gradient_step(opt, net, loss, cfg.max_grad_norm, "price reference loss")
        log.append((ce.item(), rule_ce))
        if it % 100 == 0 or it == steps - 1:
            print(f"[hidden] price reference {it} | demonstrations' ce {ce.item():.3f} | the rule's {rule_ce:.3f}"
                  f" | {time.time() - t0:.0f} s", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    checkpoint.save_run(out_path, net.eval(), cfg, enc, stage="sft", seconds=time.time() - t0, taught_from=ref_path)
    return log


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    checkpoint.add_policy_arg(p, beside="a shop run's; its ref.pt beside it unless --ref")
    p.add_argument("--ref", default=None, help="the reference it was trained from")
    p.add_argument("--tasks", type=int, default=16, help="validation tasks of the optimum check to read")
    p.add_argument("--samples", type=int, default=8, help="the policy's episodes per task")
    p.add_argument("--item_tasks", type=int, default=100,
                   help="validation tasks for the item preferences (4 list draws each; 0: none)")
    p.add_argument("--teach_items", type=int, default=0, metavar="STEPS", help="only this: the item preferences of "
                   "the reference before and after STEPS steps of training it on results-page clicks alone "
                   "(teach_items, a probe; --labels says whose)")
    p.add_argument("--labels", default="expert", choices=("expert", "rule", "reward"), help="with --teach_items: "
                   "clone the expert's clicks, or the price rule's (the first item of the target's title under the "
                   "cap), or learn from the reward of its own clicks (1 for an item of the target's title under "
                   "the cap, else 0: a bandit)")
    p.add_argument("--baseline", default="batch", choices=("batch", "page"), help="with --labels reward: the "
                   "batch's mean reward, or each page's exact expected reward")
    p.add_argument("--read_every", type=int, default=0, metavar="STEPS", help="with --teach_items: read the "
                   "reference's items every STEPS steps too")
    p.add_argument("--lr", type=float, default=1e-3, help="with --teach_items: its learning rate")
    p.add_argument("--pages", type=int, default=4000, help="with --teach_items: the training pages drawn (0: a new "
                   "page for every row)")
    p.add_argument("--price_reference", default=None, metavar="PATH", help="only this: write to PATH a reference "
                   "that reads prices (price_reference: the reference's cloning continued on its demonstrations and "
                   "the price rule's pages), then read its items")
    p.add_argument("--steps", type=int, default=1500, help="with --price_reference: its steps")
    p.add_argument("--without_rule", action="store_true", help="with --price_reference: its control, the same "
                   "cloning on the demonstrations alone")
    p.add_argument("--seed", type=int, default=0, help="the seed of the policy's sampling (with --price_reference: "
                   "of its demonstrations and pages)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.tasks < 1 or a.samples < 1 or a.steps < 1 or min(a.item_tasks, a.pages, a.teach_items, a.read_every) < 0:
        p.error("--tasks, --samples and --steps must be at least 1, --item_tasks, --pages, --teach_items and "
                "--read_every at least 0")
    if not a.lr > 0:
        p.error(f"--lr must be positive, not {a.lr}")
    if a.baseline != "batch" and a.labels != "reward":
        p.error("--baseline goes with --labels reward")
    try:
        run_ = agents.load_run(a.ckpt, a.ref, a.device, seed=a.seed)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"hidden.py: {e}")
    if a.teach_items and a.labels == "reward" and not run_.ppo.constrained:
        p.error("--labels reward samples among the available actions: it needs a run trained with "
                "`train.py --actions=available` (the default)")
    show = lambda prefs: ", ".join(f"{c} {m:.2f} ({n})" for c, (m, n) in prefs.items())
    def reading(agent):  # what a reference makes of the items on results pages
        agree, over, n = price_reading(agent, "ref")
        prefs = show(item_preferences(agent, "ref", a.item_tasks or 100))
        return (f"items on the first results page (x uniform): {prefs}; its first choice on {n} validation pages "
                f"with an item over the cap: the price rule's {agree:.2f}, over the cap {over:.2f}")

    if a.price_reference:
        price_reference(run_.ref_path, a.price_reference, a.steps, seed=a.seed, device=a.device,
                        rule=not a.without_rule)
        taught, _, _, _ = agents.load_agent(a.price_reference, a.price_reference, a.device)
        print(f"[hidden] {a.price_reference}: {reading(taught)}")
        return
    if a.teach_items:
        print(f"[hidden] the reference's {reading(run_.ppo)}")
        what = "reward" if a.labels == "reward" else "loss"
        pages = lambda steps: a.pages or steps * BATCH

        def read(step, losses):
            print(f"[hidden] after {step} steps ({pages(step)} pages; {what} {np.mean(losses[-a.read_every:]):.3f} "
                  f"over the last {a.read_every}): {reading(run_.ppo)}", flush=True)
        t0 = time.time()
        losses = teach_items(run_.ppo, pages=a.pages, steps=a.teach_items, lr=a.lr, labels=a.labels,
                             baseline=a.baseline, read_every=a.read_every, on_read=read)
        whose = f"its own clicks' reward, {a.baseline} baseline" if a.labels == "reward" else f"{a.labels}'s clicks"
        print(f"[hidden] after {a.teach_items} steps on results pages alone ({whose}, "
              f"{pages(a.teach_items)} pages; {what} {np.mean(losses[:50]):.3f} -> {np.mean(losses[-50:]):.3f}; "
              f"{time.time() - t0:.0f} s): {reading(run_.ppo)}")
        return
    S = summarise(visible_log_ratio(run_, a.tasks, a.samples))
    f = lambda x: f"{x:+.2f}"
    print(f"[hidden] {S['steps']} steps of {S['episodes']} episodes on {a.tasks} validation tasks (success "
          f"{100 * S['success']:.1f}%): pi*'s log-ratio vs its visible part (the twins' mean): Pearson "
          f"{S['opt_visible']:+.3f} {S['opt_visible_ci']}, the ceiling of a prompt-only policy")
    print(f"[hidden] the policy's log-ratio vs pi*'s {S['ppo_opt']:+.3f} {S['ppo_opt_ci']}, vs the visible part "
          f"{S['ppo_visible']:+.3f} {S['ppo_visible_ci']}, vs the hidden rest {S['ppo_hidden']:+.3f} | failure AUROC "
          "of the summed PA: " + ", ".join(f"{k} {v:.3f}" for k, v in S["auroc"].items()))
    for k, b in S["by_kind"].items():
        print(f"[hidden]   {k:7s} ({b['steps']} steps): pi*'s vs its visible part {f(b['opt_visible'])} (sd "
              f"{b['sd_opt']:.2f}, hidden rest {b['sd_hidden']:.2f}); the policy's vs pi*'s {f(b['ppo_opt'])}, "
              f"vs the visible part {f(b['ppo_visible'])}")
    if a.item_tasks:
        for name, model in (("policy", "policy"), ("reference", "ref")):
            prefs = item_preferences(run_.ppo, model, a.item_tasks)
            print(f"[hidden] items on the first results page, {name} (x uniform): {show(prefs)}")


if __name__ == "__main__":
    main(sys.argv[1:])
