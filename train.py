"""
train.py: the whole pipeline. Stage 1 behaviour-clones a reference from noisy-expert demonstrations;
stage 2 runs PPO with GAE and a per-token KL penalty to that frozen reference; then the evaluation report.

    python train.py                                  # both stages + the report (~23 min on a 2-core CPU)
    python train.py --stage=ppo --ppo_iters=90       # PPO only, from out/ref.pt
    python train.py --init_from=resume               # continue an interrupted run from its last checkpoint
    python train.py --stage=ppo --seeds=3            # three PPO runs from out/ref.pt, PA read from their mean
    python train.py --stage=prm                      # PA's other references and trained reward models (prm.py)
    python train.py --help                           # every option (config.py: each with what it does)

The PPO math is written out by hand below (gae, ppo_losses), to be read next to CleanRL's ppo.py.
Deliberate departures from textbook PPO, each for Proposition 1 of the paper (README.md):
  - the reward is per token: r_t = -beta * KL(pi || pi_ref) at every action token (the whole KL over the
    next token, exact; --kl=sampled: the sampled token's log(pi / pi_ref), its one-sample estimate), plus the
    environment's reward on the last token of the action that earned it. beta is fixed (no adaptive KL
    controller): Proposition 1 needs one known beta, and it is saved in the checkpoint for scoring;
  - GAE runs over the episode's action tokens only, in order; prompt tokens are context, never steps;
  - no dropout, and one temperature everywhere, so the first PPO ratio is exactly 1;
  - the policy samples only the available actions (--actions=any: any text, an invalid one a no-op), and the
    report reads PA from the mean of the late iterates' weights (ppo_avg.pt), which follows the optimum more
    closely than the last iterate (README.md, "Results").
"""
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import agents
import checkpoint
import config
import envs
import model as M
import pa
import ppo_variants
import prm
import report
import tokenizer


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg, enc):
    mcfg = M.GPTConfig(block_size=cfg.block_size, vocab_size=enc.n_vocab, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_embd=cfg.n_embd)
    return M.GPT(mcfg).to(cfg.device)


def log_line(path, rec):
    """One line per iteration with ' | ' separators, and the same numbers appended to a JSONL file."""
    print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")

# -----------------------------------------------------------------------------
# stage 1: the reference, by behaviour cloning


def demonstrations(cfg, enc):
    """Noisy-expert episodes on training tasks -> (prompt ids, action ids + stop, return) per step."""
    rng = random.Random(cfg.seed)
    rows = []
    for i in tqdm(range(cfg.sft_episodes), desc="demonstrations", leave=False):
        env = envs.make_env(cfg.env, split="train", task=rng.randrange(10**9), seed=rng.randrange(10**9))
        obs, done, steps = env.reset(), False, []
        while not done:
            a = envs.noisy_expert_action(env, rng, cfg.sft_eps)
            steps.append((enc.encode_ordinary(obs), tokenizer.encode_action(enc, a)))
            obs, r, done, _ = env.step(a)
        rows += [(p, a, r) for p, a in steps]  # gamma = 1 and one final reward: every step's return is r
    return rows


def cloning_loss(net, rows, pad, device):
    """Behaviour cloning on a batch of rows (prompt ids, action ids + stop, return): the cross-entropy of the action
    tokens (the prompt masked) and the value head's squared error on the return, each per action token."""
    idx, action_mask = M.pack([r[0] for r in rows], [r[1] for r in rows], pad)
    idx, action_mask = idx.to(device), action_mask.to(device)
    returns = torch.tensor([r[2] for r in rows], device=device)[:, None]
    with M.autocast_ctx(device):
        # maximum likelihood at temperature 1: the network fits the demonstrations themselves, and
        # cfg.temperature then defines the reference POLICY (sampling, KL, PPO ratio and PA alike)
        logprobs, values, _ = net.evaluate(idx, 1.0, action_mask=action_mask)
    n = action_mask.sum()
    return -(logprobs * action_mask).sum() / n, 0.5 * (((values - returns) ** 2) * action_mask).sum() / n


def sft_lr(cfg, it, iters):
    """Behaviour cloning's learning rate at step it of iters: a warm-up over 50 steps, then a cosine to zero."""
    return cfg.sft_lr * min(1.0, (it + 1) / 50) * 0.5 * (1 + math.cos(math.pi * it / iters))


def train_sft(cfg, enc):
    """Cross-entropy on action tokens only (prompt tokens masked) plus a value regression on the
    demonstration's return, so that PPO starts with a critic that already knows roughly how good a
    page is (a random critic would make the first PPO advantages mostly noise)."""
    net = build_model(cfg, enc)
    print(f"reference model: {net.num_params() / 1e6:.2f}M parameters on {cfg.device}")
    rows = demonstrations(cfg, enc)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.sft_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    pad, log = tokenizer.pad_id(enc), os.path.join(cfg.out_dir, "sft_log.jsonl")
    t0 = time.time()
    for it in range(cfg.sft_iters):
        lr = sft_lr(cfg, it, cfg.sft_iters)
        for g in opt.param_groups:
            g["lr"] = lr
        ix = torch.randint(len(rows), (cfg.sft_batch,), generator=gen).tolist()
        ce, v_loss = cloning_loss(net, [rows[i] for i in ix], pad, cfg.device)
        loss = ce + cfg.sft_vf_coef * v_loss
        M.gradient_step(opt, net, loss, cfg.max_grad_norm, "sft loss")
        if it + 1 == max(1, round(cfg.sft_early * cfg.sft_iters)):  # knows the format, not yet the task well:
            checkpoint.save_run(os.path.join(cfg.out_dir, "ref_early.pt"), net, cfg, enc, stage="sft_early", iter=it,
                       seconds=time.time() - t0)  # the analogue of a base model, a reference for PA (prm.py)
        if it % 100 == 0 or it == cfg.sft_iters - 1:
            log_line(log, dict(iter=it, ce=ce.item(), v_loss=v_loss.item(), lr=lr,
                               seconds=round(time.time() - t0, 1)))
    checkpoint.save_run(os.path.join(cfg.out_dir, "ref.pt"), net, cfg, enc, stage="sft", seconds=time.time() - t0)
    return net


# -----------------------------------------------------------------------------
# stage 2: PPO with GAE and a per-token KL penalty


def gae(rewards, values, action_mask, gamma, lam):
    """Generalised advantage estimation over action tokens only.
        delta_t = r_t + gamma * V_next - V_t,   A_t = delta_t + gamma * lam_t * A_next
    where 'next' is the next ACTION token of the same row (positions with action_mask 0, i.e. prompt,
    observation and padding tokens, are skipped entirely) and the value after the row's last action
    token is 0 (the episode is over). rewards, values, action_mask: (B, T) fp32, values[t] = V of the
    state before token t; lam a number, or (B, T) per token (action_lambdas). Returns (advantages, returns),
    (B, T), zero where action_mask is 0."""
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = action_mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * (lam[:, t] if torch.is_tensor(lam) else lam) * next_adv
        advantages[:, t] = torch.where(m, adv, torch.zeros_like(adv))
        next_adv = torch.where(m, adv, next_adv)  # a skipped token leaves the recursion untouched
        next_value = torch.where(m, values[:, t], next_value)
    returns = (advantages + values) * action_mask
    return advantages, returns


def episode_tensors(episodes, beta, kl=None):
    """Lay each episode's action tokens end to end in one row: (E, L) logprobs, ref_logprobs, values,
    rewards, action_mask. rewards = -beta * (logprobs - ref_logprobs) on every action token, plus each
    step's environment reward on that step's LAST action token (the stop token).
    kl (--kl=exact): per step of every episode in order, a (k,) tensor of the whole KL(pi || pi_ref) at each
    action token (exact_kl), used in the reward instead of the sampled token's log-ratio: the same expectation,
    without the sampling noise."""
    L = max(sum(len(s.action) for s in ep.steps) for ep in episodes)
    E = len(episodes)
    lp, ref, v, r, mask, penalty = (torch.zeros(E, L) for _ in range(6))
    kls = iter(kl) if kl is not None else None
    for e, ep in enumerate(episodes):
        t = 0
        for s in ep.steps:
            k = len(s.action)
            lp[e, t:t + k], ref[e, t:t + k], v[e, t:t + k] = s.logprobs, s.ref_logprobs, s.values
            penalty[e, t:t + k] = s.logprobs - s.ref_logprobs if kls is None else next(kls)
            mask[e, t:t + k] = 1.0
            r[e, t + k - 1] += s.reward
            t += k
    r += -beta * penalty * mask
    return lp, ref, v, r, mask


def exact_kl(agent, policy, steps):
    """--kl=exact: for each step, the whole KL(pi || pi_ref) over the vocabulary (over the available actions'
    tokens when the agent is constrained) at each action token, (k,), and the reference's log-probs there, (k, V),
    for the loss. No gradient; batch_size steps per model call."""
    kls, refs, B = [], [], agent.batch_size
    for c in range(0, len(steps), B):
        mb = steps[c:c + B]
        idx, mask = M.pack([s.prompt for s in mb], [s.action for s in mb], agent.pad)
        idx, mask = idx.to(agent.device), mask.to(agent.device)
        choices, actions = [s.choices for s in mb], [s.action for s in mb]
        with torch.no_grad(), M.autocast_ctx(agent.device):
            logp = agent.evaluate(policy, idx, mask, choices, actions, dist=True)[-1].float()
            logq = agent.evaluate(agent.ref, idx, mask, choices, actions, dist=True)[-1].float()
        kl, logq, n = M.kl_div(logp, logq).cpu(), logq.cpu(), 0  # (N,), (N, V): the rows' action tokens in order
        for s in mb:
            kls.append(kl[n:n + len(s.action)])
            refs.append(logq[n:n + len(s.action)])
            n += len(s.action)
    return kls, refs


def per_step_to_tokens(values, episodes, shape):
    """[[one number, or one per action token, per step] per episode] -> (E, L): a number goes on every action
    token of its step."""
    out = torch.zeros(shape)
    for e, (ep, xs) in enumerate(zip(episodes, values)):
        t = 0
        for s, x in zip(ep.steps, xs):
            out[e, t:t + len(s.action)] = x
            t += len(s.action)
    return out


def action_lambdas(episodes, lam, shape):
    """--lam_per=action: GAE's lambda per action token, (E, L): 1 within an action, lam on its last token (the
    step from it to the next action's first token, across the environment)."""
    return per_step_to_tokens([[torch.tensor([1.0] * (len(s.action) - 1) + [lam]) for s in ep.steps]
                               for ep in episodes], episodes, shape)


def whiten(x, mask, eps=1e-8):
    """Zero mean, unit variance over the masked entries. A single entry has no spread: centred only."""
    n = mask.sum()
    mean = (x * mask).sum() / n.clamp(min=1)
    if n < 2:
        return (x - mean) * mask
    var = (((x - mean) * mask) ** 2).sum() / (n - 1)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def ppo_losses(logprobs, old_logprobs, advantages, values, old_values, returns, mask, clip, vclip):
    """Clipped PPO losses over the action tokens (mask 1), all inputs (B, T):
        ratio   = exp(logprobs - old_logprobs)
        pg_loss = mean max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip))
        v_loss  = 0.5 * mean max((V - R)^2, (old_V + clip(V - old_V, -vclip, vclip) - R)^2)
    Returns the two losses and the diagnostics approx_kl ((ratio - 1) - log ratio, always >= 0),
    clipfrac and the ratio itself."""
    logratio = logprobs - old_logprobs
    ratio = logratio.exp()
    pg_loss = masked_mean(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)), mask)
    v_clipped = old_values + (values - old_values).clamp(-vclip, vclip)
    v_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - logratio, mask)
        clipfrac = masked_mean(((ratio - 1).abs() > clip).float(), mask)
    return pg_loss, v_loss, dict(approx_kl=approx_kl.item(), clipfrac=clipfrac.item(), ratio=ratio)


RESUME = "the last good checkpoint is kept: resume with --init_from=resume after lowering the learning rate"


def ppo_update(cfg, policy, opt, agent, episodes, gen, advantages=None, critic_only=False, critic=None,
               critic_opt=None):
    """One PPO iteration's learning from its rollouts. Returns the logged statistics. `advantages`, if given,
    replaces GAE's for the policy loss: a function of the episodes giving one number per step of each episode,
    put on every token of that step's action, or a vector over its tokens (diagnose.py's runs with exact
    advantages from the oracle; --advantage=mc). Without it, --advantage=rloo reads the episodes' returns here.
    critic_only: fit the critic alone, to Monte Carlo returns (GAE with lambda = 1), with no policy loss.
    critic (with its own critic_opt): a separate network whose value head is the critic (--critic=separate):
    the rollouts' values are re-read from it, and the value loss trains it alone, never the policy."""
    # a warm-up fits the critic alone: with one shared network, its value loss must not move the policy's trunk
    policy.detach_value = cfg.detach_value or (critic_only and critic is None)
    if critic is not None:
        ppo_variants.critic_values(critic, agent, episodes)
    # 1. rewards and GAE: per-token rewards and GAE over each episode's action tokens (fp32, no grad)
    exact = cfg.kl == "exact"
    kls, ref_dists = exact_kl(agent, policy, [s for ep in episodes for s in ep.steps]) if exact else (None, None)
    lp, ref, v, r, mask = episode_tensors(episodes, cfg.beta, kls)
    lam = cfg.lam if cfg.lam_per == "token" else action_lambdas(episodes, cfg.lam, mask.shape)
    adv, ret = gae(r, v, mask, cfg.gamma, 1.0 if critic_only else lam)
    if advantages is not None:
        adv = per_step_to_tokens(advantages(episodes), episodes, mask.shape)
    elif cfg.advantage == "rloo":  # no critic: each episode's whole return, with the same KL penalty as GAE's rewards
        adv = per_step_to_tokens(ppo_variants.rloo_advantages(episodes, r.sum(1).tolist()), episodes, mask.shape)
    # --kl=exact: the KL at each token is also differentiated there (the part of the objective's gradient that the
    # sampled penalty only estimates); divided by the advantages' spread, as the advantages are by whitening
    kl_coef = cfg.beta * float(torch.rsqrt(adv[mask > 0].var() + 1e-8)) if exact and mask.sum() > 1 else cfg.beta
    adv = whiten(adv, mask)
    # 2. one row per step: scatter back to (the Markov prompt + the action), the unit the model sees
    steps, s_adv, s_ret = [], [], []
    s_tgt = [x for xs in ppo_variants.consistency_targets(episodes) for x in xs] if cfg.consistency else None
    for e, ep in enumerate(episodes):
        t = 0
        for s in ep.steps:
            k = len(s.action)
            steps.append(s)
            s_adv.append(adv[e, t:t + k])
            s_ret.append(ret[e, t:t + k])
            t += k
    stats, first_ratio = dict(pg_loss=[], v_loss=[], approx_kl=[], clipfrac=[], entropy=[]), None
    # 3. clipped updates: several epochs on minibatches of steps, stopping early past target_kl
    for epoch in range(cfg.update_epochs):
        perm = torch.randperm(len(steps), generator=gen).tolist()
        for start in range(0, len(steps), cfg.minibatch):
            mbi = perm[start:start + cfg.minibatch]
            mb = [steps[i] for i in mbi]
            idx, mb_mask = M.pack([s.prompt for s in mb], [s.action for s in mb], agent.pad)
            place = lambda xs: _place(xs, mb, idx.shape)  # per-step action vectors -> (b, T)
            mb_old_lp, mb_old_v = place([s.logprobs for s in mb]), place([s.values for s in mb])
            mb_adv, mb_ret = place([s_adv[i] for i in mbi]), place([s_ret[i] for i in mbi])
            dev = cfg.device
            choices, actions = [s.choices for s in mb], [s.action for s in mb]
            with M.autocast_ctx(dev):
                new_lp, new_v, ent, *dist = agent.evaluate(policy, idx.to(dev), mb_mask.to(dev), choices, actions,
                                                            cfg.temperature, dist=exact)
                if critic is not None:
                    _, new_v, _ = critic.evaluate(idx.to(dev), cfg.temperature, action_mask=mb_mask.to(dev))
            new_lp, new_v, ent = new_lp.float().cpu(), new_v.float().cpu(), ent.float().cpu()
            pg_loss, v_loss, d = ppo_losses(new_lp, mb_old_lp, mb_adv, new_v, mb_old_v, mb_ret, mb_mask,
                                            cfg.clip, cfg.vclip)
            entropy = masked_mean(ent, mb_mask)
            if first_ratio is None:  # nothing has changed yet: this must be exactly 1
                first_ratio = (d["ratio"] - 1).abs().mul(mb_mask).max().item()
            policy_loss = 0.0 if critic_only else pg_loss - cfg.ent_coef * entropy
            if cfg.consistency and not critic_only:  # the step's log-ratio, regressed onto r + V(s') - V(s)
                step_log_ratio = ((new_lp - place([s.ref_logprobs for s in mb])) * mb_mask).sum(1)
                cons = ((cfg.beta * step_log_ratio - torch.tensor([s_tgt[i] for i in mbi])) ** 2).mean()
                policy_loss = policy_loss + cfg.consistency * cons
                stats.setdefault("consistency", []).append(cons.item())
            if exact and not critic_only:  # mean over the action tokens, as pg_loss
                kl_loss = M.kl_div(dist[0].float().cpu(), torch.cat([ref_dists[i] for i in mbi])).mean()
                policy_loss = policy_loss + kl_coef * kl_loss
                stats.setdefault("kl_loss", []).append(kl_loss.item())
            if critic is None:  # one network: both losses through the shared trunk (no value loss with rloo, mc)
                vf_coef = cfg.vf_coef if cfg.advantage == "gae" else 0.0
                M.gradient_step(opt, policy, policy_loss + vf_coef * v_loss, cfg.max_grad_norm, "ppo loss", RESUME)
            else:
                if not critic_only:
                    M.gradient_step(opt, policy, policy_loss, cfg.max_grad_norm, "ppo policy loss", RESUME)
                M.gradient_step(critic_opt, critic, cfg.vf_coef * v_loss, cfg.max_grad_norm, "ppo value loss",
                                RESUME)
            for k, x in (("pg_loss", pg_loss.item()), ("v_loss", v_loss.item()), ("approx_kl", d["approx_kl"]),
                         ("clipfrac", d["clipfrac"]), ("entropy", entropy.item())):
                stats[k].append(x)
        if np.mean(stats["approx_kl"][-math.ceil(len(steps) / cfg.minibatch):]) > cfg.target_kl:
            break  # the policy moved far enough from the rollout policy for this batch
    out = {k: float(np.mean(x)) for k, x in stats.items()}
    vv, rr = v[mask > 0], ret[mask > 0]
    out["explained_var"] = float(1 - (rr - vv).var() / rr.var().clamp(min=1e-8))
    out["first_ratio_dev"] = first_ratio
    return out


def _iter_of(line):
    """The iteration of a log line; a line cut short by a kill counts as after the checkpoint."""
    try:
        return json.loads(line)["iter"]
    except (ValueError, KeyError):
        return math.inf


def _place(vectors, mb, shape):
    """Put each step's per-action-token vector at its action positions in the packed (b, T) minibatch."""
    out = torch.zeros(shape)
    for b, (s, x) in enumerate(zip(mb, vectors)):
        out[b, len(s.prompt):len(s.prompt) + len(s.action)] = x
    return out


def _start_weights(cfg, enc, ref, policy):
    """The reference's weights, or those of --ppo_start (a checkpoint of the same world, tokenizer and shape)."""
    if not cfg.ppo_start:
        return ref.state_dict()
    ck = checkpoint.load(cfg.ppo_start, env_name=cfg.env, tokenizer_spec=tokenizer.tokenizer_spec(enc))
    if M.GPTConfig(**ck["config"]) != policy.config:
        raise checkpoint.CheckpointError(f"--ppo_start {cfg.ppo_start} is a network of another shape: {ck['config']}")
    print(f"PPO starts from the weights of {cfg.ppo_start}")
    return ck["model"]


def ppo_weights(cfg, policy):
    """The weights PPO moves (--ppo_train: all, or those whose names hold one of its parts, and the value head);
    the others are frozen at their starting values."""
    parts = None if cfg.ppo_train == "all" else cfg.ppo_train.split(",")
    for name, w in policy.named_parameters():
        w.requires_grad_(parts is None or name.startswith("value_head") or any(p in name for p in parts))
    return [w for w in policy.parameters() if w.requires_grad]


def lr_at(cfg, it):
    """PPO's learning rate at iteration `it` (0-based, the critic's warm-up iterations counted)."""
    return cfg.ppo_lr * (1 - it / (cfg.critic_warmup + cfg.ppo_iters)) if cfg.anneal_lr else cfg.ppo_lr


def set_lr(cfg, it, *opts):
    """Put iteration `it`'s learning rate into each optimizer given (None: none, say without a critic of its own)."""
    for o in filter(None, opts):
        for g in o.param_groups:
            g["lr"] = lr_at(cfg, it)


def averaged(cfg, it):
    """How many iterates the --average_from mean holds once iteration `it` is done (0: none yet, or off)."""
    return max(0, it - cfg.average_from + 1) if cfg.average_from else 0


def running_mean(avg, net, n):
    """The mean of n iterates' weights: that of the first n - 1 (avg; None for none) moved 1/n of the way to net's."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return state if avg is None else pa.merge_weights(avg, state, 1 / n)


def _resolve_average_from(cfg, ck=None):
    """--average_from=-1, the default: a resumed run keeps the one it was started with (ck, its checkpoint); a new
    one averages its last two thirds, from iteration ppo_iters // 3 after any warm-up (none under 3 iterations)."""
    if cfg.average_from == -1:
        cfg.average_from = (ck["train_config"].get("average_from", 0) if ck is not None else
                            cfg.critic_warmup + cfg.ppo_iters // 3 if cfg.ppo_iters >= 3 else 0)


def _check_resume(ck, cfg, ppo_path):
    """Refuse, before anything is loaded or rewritten, a resume whose options would change the run it continues.
    Returns the iteration to resume at."""
    if "optimizer" not in ck:
        raise checkpoint.CheckpointError(f"{ppo_path} holds no training state (a soup of runs?): start PPO from it "
                                f"with --ppo_start, in another out_dir")
    start = ck["iter"] + 1
    was = ck.get("train_config", {})
    for key, default in (("ppo_start", ""), ("actions", "any"), ("ppo_train", "all")):
        made_with = was.get(key, default)
        if made_with != getattr(cfg, key):
            raise SystemExit(f"{ppo_path} was trained with --{key}={made_with or '(none)'}: resume it with that, "
                             f"or start anew")
    if ("critic" in ck) != (cfg.critic == "separate"):
        raise SystemExit(f"{ppo_path} was trained with --critic={'separate' if 'critic' in ck else 'shared'}: "
                         f"resume it with that, or start anew")
    if ck.get("averaged", 0) != averaged(cfg, start - 1):
        raise SystemExit(f"{ppo_path} holds the mean of {ck.get('averaged', 0)} iterations: resume it with the "
                         f"--average_from it was started with, or start anew")
    return start


def train_ppo(cfg, enc, ref):
    """PPO from the reference, or from --ppo_start's weights; a frozen copy of the reference stays for the KL
    reward."""
    ppo_path, log = os.path.join(cfg.out_dir, "ppo.pt"), os.path.join(cfg.out_dir, "ppo_log.jsonl")
    avg_path, avg = os.path.join(cfg.out_dir, "ppo_avg.pt"), None
    resuming = cfg.init_from == "resume" and os.path.exists(ppo_path)
    policy = build_model(cfg, enc)
    if policy.config != ref.config:  # refuse in one line, not with load_state_dict's size mismatch
        raise checkpoint.CheckpointError(f"the reference in {cfg.out_dir} is a network of another shape "
                                         f"({vars(ref.config)}): run PPO with the options it was trained with")
    policy.load_state_dict(ref.state_dict() if resuming else _start_weights(cfg, enc, ref, policy))
    ref.eval().requires_grad_(False)
    opt = torch.optim.AdamW(ppo_weights(cfg, policy), lr=cfg.ppo_lr, eps=cfg.adam_eps, weight_decay=0.0)
    critic, critic_opt = ppo_variants.separate_critic(cfg, ref)
    gen, start = torch.Generator().manual_seed(cfg.seed + 1), 0  # minibatch order (CPU)
    sample_gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 2)  # action sampling
    if resuming:
        ck = checkpoint.load(ppo_path, env_name=cfg.env, tokenizer_spec=tokenizer.tokenizer_spec(enc))
        _resolve_average_from(cfg, ck)
        start = _check_resume(ck, cfg, ppo_path)
        policy.load_state_dict(ck["model"])
        avg = checkpoint.restore_training_state(ck, opt, gen, sample_gen, critic, critic_opt, cfg.device)
        print(f"resuming PPO at iteration {start} from {ppo_path}")
        if os.path.exists(log):  # forget log lines of iterations after the checkpoint
            keep = [l for l in open(log) if _iter_of(l) < start]
            open(log, "w").writelines(keep)
    else:
        _resolve_average_from(cfg)
        for path in (log, avg_path):
            if os.path.exists(path):
                os.remove(path)
    agent = agents.make_agent(cfg, policy, ref, enc)
    task_rng = random.Random()  # seeded anew at each iteration
    for it in range(start, cfg.critic_warmup + cfg.ppo_iters):  # the critic's warm-up iterations come first
        t0 = time.time()
        task_rng.seed(cfg.seed * 100_003 + it)  # this iteration's tasks, the same after a resume
        env_list = []
        for _ in range(cfg.episodes_per_iter // cfg.samples_per_task):  # a task, then a seed for each of its samples
            t = task_rng.randrange(cfg.task_pool or 10**9)
            env_list += [envs.make_env(cfg.env, "train", t, task_rng.randrange(10**9))
                         for _ in range(cfg.samples_per_task)]
        policy.eval()
        with tqdm(desc=f"rollouts {it}", unit=" steps", leave=False) as bar:
            episodes = agents.rollout(agent, env_list, generator=sample_gen, progress=bar, keep_states=cfg.advantage == "mc")
        advantages = None
        if cfg.advantage == "mc":  # the values of the visited states from the policy's own re-rollouts
            mc = agents.mc_state_values(agent, episodes, cfg.mc_rollouts, sample_gen, cfg.beta,
                                    seed=cfg.seed * 10**7 + it * 10**5)
            advantages = lambda eps: ppo_variants.mc_advantages(eps, mc, cfg.beta)
        policy.train()
        t1 = time.time()
        critic_only = it < cfg.critic_warmup
        set_lr(cfg, it, opt, critic_opt)  # the critic's own optimizer too, with --critic=separate
        stats = ppo_update(cfg, policy, opt, agent, episodes, gen, critic_only=critic_only, advantages=advantages,
                           critic=critic, critic_opt=critic_opt)
        n_tok = sum(len(s.prompt) + len(s.action) for ep in episodes for s in ep.steps)
        steps = [s for ep in episodes for s in ep.steps]
        rec = dict(iter=it, reward=float(np.mean([e.reward for e in episodes])),
                   success=float(np.mean([e.success for e in episodes])),
                   kl=float(np.mean([sum(s.log_ratio for s in ep.steps) for ep in episodes])),
                   **stats, invalid=float(np.mean([not s.valid for s in steps])),
                   tok_per_s=round(n_tok * (1 + cfg.update_epochs) / (time.time() - t0)),
                   rollout_s=round(t1 - t0, 1), seconds=round(time.time() - t0, 1),
                   **(dict(lr=lr_at(cfg, it)) if cfg.anneal_lr else {}),
                   **(dict(critic_only=critic_only) if cfg.critic_warmup else {}))
        log_line(log, rec)
        n = averaged(cfg, it)
        if n:
            avg = running_mean(avg, policy, n)
        checkpoint.save_run(ppo_path, policy, cfg, enc, stage="ppo", iter=it,
                            **checkpoint.training_state(opt, gen, sample_gen, critic, critic_opt, avg, n))
        if n:  # the same mean as a policy of its own, for report.py and search.py
            checkpoint.save_run(avg_path, policy, cfg, enc, weights=avg, stage="ppo", iter=it, averaged=n)
    return policy


def train_soup(cfg, enc, ref):
    """--seeds=N: N PPO runs from the reference, each as `--stage=ppo --seed=S` would make it in out_dir/seed<S>/,
    then the mean of their policies' weights (a "seed soup"; weight averaging of fine-tuned runs that share their
    start: Wortsman et al. 2022, arXiv 2203.05482; of RL runs: Rame et al. 2024, arXiv 2406.16768). Each run's
    log-ratio is a shared signal plus its own noise; the mean keeps the first and shrinks the second (LOG.md).
    An interrupted soup resumes run by run (--init_from=resume)."""
    paths = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        run = dataclasses.replace(cfg, seed=seed, seeds=1, out_dir=os.path.join(cfg.out_dir, f"seed{seed}"))
        os.makedirs(run.out_dir, exist_ok=True)
        # each run's folder is a run of its own, its reference the one it trains from (never an older one)
        shutil.copyfile(os.path.join(cfg.out_dir, "ref.pt"), os.path.join(run.out_dir, "ref.pt"))
        print(f"PPO run {seed - cfg.seed + 1} of {cfg.seeds} (seed {seed}) in {run.out_dir}")
        seed_all(seed)
        train_ppo(run, enc, ref)
        paths.append(os.path.abspath(checkpoint.policy_path(run.out_dir)))
    weights, keep = checkpoint.soup(paths)
    path = os.path.join(cfg.out_dir, "ppo_soup.pt")
    checkpoint.save(path, dict(keep, model=weights, stage="soup", soup_of=paths,
                                 train_config=dict(keep["train_config"], seeds=cfg.seeds)))
    print(f"[soup] the mean of {cfg.seeds} runs' weights -> {path}")


def main(argv):
    cfg = config.resolve(config.parse_args(argv, usage=__doc__))
    os.makedirs(cfg.out_dir, exist_ok=True)
    seed_all(cfg.seed)
    enc = tokenizer.build_tokenizer(envs.tokenizer_texts(cfg.env), cfg.env)
    ref_path = os.path.join(cfg.out_dir, "ref.pt")
    times = {}
    if cfg.stage in ("sft", "all") and not (cfg.init_from == "resume" and os.path.exists(ref_path)):
        t0 = time.time()
        train_sft(cfg, enc)
        times["sft_s"] = round(time.time() - t0, 1)
        print(f"stage sft (demonstrations + behaviour cloning): {times['sft_s']} s")
    if cfg.stage in ("ppo", "all"):
        t0 = time.time()
        ref, _ = checkpoint.load_run(ref_path, cfg, enc, cfg.device)
        soup_path = os.path.join(cfg.out_dir, "ppo_soup.pt")
        if os.path.exists(soup_path):  # a soup of earlier runs, which the report would read instead of these
            if cfg.init_from != "resume":
                os.remove(soup_path)
            elif cfg.seeds == 1:
                raise SystemExit(f"{soup_path} is a soup of several PPO runs: resume it with the --seeds it was "
                                 f"made with, or start anew")
        (train_soup if cfg.seeds > 1 else train_ppo)(cfg, enc, ref)
        times["ppo_s"] = round(time.time() - t0, 1)
        print(f"stage ppo: {times['ppo_s']} s")
    if cfg.stage == "prm":
        ref, _ = checkpoint.load_run(ref_path, cfg, enc, cfg.device)
        policy, ck = checkpoint.load_run(checkpoint.policy_path(cfg.out_dir), cfg, enc, cfg.device)
        for k in ("beta", "temperature", "max_action_tokens"):  # PPO's own, whatever the command line says
            setattr(cfg, k, ck["train_config"][k])
        cfg.actions = ck["train_config"].get("actions", "any")  # runs older than --actions wrote free text
        prm.train_prms(cfg, enc, ref, policy)
        if cfg.eval:
            prm.compare(checkpoint.policy_path(cfg.out_dir), cfg.out_dir, cfg.device, cfg.batch_size)
    if cfg.eval and cfg.stage in ("all", "eval"):
        t0 = time.time()
        quick = cfg.report == "quick" or (cfg.report == "auto" and not cfg.device.startswith("cuda"))
        rc = report.ReportConfig(**(report.QUICK if quick else {}))
        report.run(checkpoint.policy_path(cfg.out_dir), cfg.out_dir, ref_path, cfg.device, cfg.batch_size, rc, times)
        print(f"stage report: {round(time.time() - t0, 1)} s")
    return cfg


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except checkpoint.CheckpointError as e:  # a missing, truncated or foreign checkpoint: say which, no traceback
        raise SystemExit(f"train.py: {e}")
