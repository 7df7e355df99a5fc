"""
search.py: the agent loop, best-of-N, PA-guided step-level beam search.

The agent loop (rollout) is shared by training and evaluation: every environment in a batch is stepped
in lock-step, one model call per step for all of them, and each step leaves a record with the prompt and
action tokens, the policy's and the reference's per-token log-probs, the critic's values, the reward and
(in evaluation) the oracle's Q*(s, a) and V*(s). Everything the step scorers of pa.py need is in there,
so best-of-N, failure prediction and attribution never run the model again.

Compute is counted as model forward passes per sequence (a prefill or a one-token decode of one row = 1)
plus environment steps, so that search methods can be compared at matched compute.

    python search.py --ckpt out/ppo_avg.pt --show 3   # the "progress meter": 3 test episodes step by step
    python report.py --ckpt out/ppo_avg.pt            # the evaluation report, which uses all of this
"""
import json
import math
import os
import sys
from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np
import torch

import envs
import model as M
import pa
import tokenizer

# -----------------------------------------------------------------------------
# records


@dataclass
class Step:
    prompt: list            # prompt token ids (the Markov prompt of this step)
    action: list            # action token ids, ending with the stop token when one was produced
    text: str               # the decoded action, as given to env.step
    logprobs: torch.Tensor  # (k,) log pi(a_i | s, a_<i) of the action tokens, fp32
    ref_logprobs: torch.Tensor  # (k,) the same under the frozen reference
    values: torch.Tensor    # (k,) critic V(state before action token i); values[0] = V(s)
    entropy: torch.Tensor   # (k,) entropy of the policy at each action token
    topk: torch.Tensor      # (k, TOPK) the policy's largest log-probs at each action token
    reward: float = 0.0
    done: bool = False
    valid: bool = True
    qstar: float = math.nan  # Q*(s, a) of the action taken (oracle runs only)
    vstar: float = math.nan  # V*(s)
    env: object = None       # a clone of the environment before the action (keep_states runs only)
    choices: tuple = None    # the available actions it was chosen from (constrained agents only)
    noop_log_ratio: float = None  # invalid steps of rollout(..., noop=True): log pi/pi_ref of writing no action at
                                  # all (read_noop); nan where either network puts no mass there
    best_log_ratio: float = None  # rollout(..., gap=True): the largest log pi/pi_ref over the actions available
                                  # at the state (read_noop); nan where none is

    @property
    def log_ratio(self):
        """log pi(a|s) - log pi_ref(a|s) of the whole action: the sum over its tokens (PA / beta)."""
        return float((self.logprobs - self.ref_logprobs).sum())


@dataclass
class Episode:
    task: int
    seed: int
    unseen: bool
    steps: list = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    truncated: bool = False
    handover: int = None  # the step at which a halting monitor handed over to the expert (rollout's monitor)

    @property
    def success(self):
        return self.reward == 1.0


TOPK = 5  # top-k log-probs kept per token for the self-certainty baseline


class Agent:
    """The policy, its frozen reference and the tokenizer, plus a counter of forward passes.
    constrained (train.py's --actions=available): both networks write only available actions. Each token is drawn
    from the network's distribution renormalised over the tokens that continue one of the state's actions (a
    prefix trie of their tokens), and every log-prob, the reference's too, is that renormalised one: pi and pi_ref
    are then distributions over the available actions alone, and PA compares those."""

    def __init__(self, policy, ref, enc, beta, temperature=1.0, max_action_tokens=16, batch_size=256,
                 constrained=False):
        self.policy, self.ref, self.enc, self.beta = policy, ref, enc, beta
        self.temperature, self.max_action_tokens, self.batch_size = temperature, max_action_tokens, batch_size
        self.constrained = constrained
        self.stop = tokenizer.end_id(enc)
        self.pad = tokenizer.pad_id(enc)
        self.device = next(policy.parameters()).device
        self.forward_passes = 0
        self._tries = {}

    def like(self, policy, ref, constrained=None):
        """An agent with the same settings (constrained too, unless given) around other networks."""
        return Agent(policy, ref, self.enc, self.beta, self.temperature, self.max_action_tokens, self.batch_size,
                     self.constrained if constrained is None else constrained)

    def trie(self, choices):
        """{tokens so far: the token ids that may come next} over the tokens of the actions `choices`, each ending
        with the stop token. An action longer than max_action_tokens could never be written: refused."""
        key = tuple(choices)
        if key not in self._tries:
            if len(self._tries) > 50_000:
                self._tries.clear()
            t = {}
            for text in choices:
                toks = tokenizer.encode_action(self.enc, text)
                if len(toks) > self.max_action_tokens:
                    raise ValueError(f"the action {text!r} takes {len(toks)} tokens, more than max_action_tokens "
                                     f"({self.max_action_tokens}): raise --max_action_tokens")
                for i, tok in enumerate(toks):
                    t.setdefault(tuple(toks[:i]), set()).add(tok)
            self._tries[key] = {k: sorted(v) for k, v in t.items()}
        return self._tries[key]

    def allowed_mask(self, choices, actions, vocab_size):
        """(N, V) bool for evaluate(): at each action token of each row, in order, the tokens its trie allows."""
        tries = self._tries_of(choices, len(actions))
        try:
            return M.trie_mask(tries, actions, vocab_size)
        except ValueError:  # only then walk the tries again, to name the action in words
            for t, ch, a in zip(tries, choices, actions):
                if any(tok not in t.get(tuple(a[:i]), ()) for i, tok in enumerate(a)):
                    raise ValueError(f"action {self.decode(a)!r} is not one of the available actions "
                                     f"{list(ch)}") from None
            raise

    def encode(self, obs):
        return self.enc.encode_ordinary(obs)

    def decode(self, action):
        return tokenizer.decode_action(self.enc, action)

    @torch.no_grad()
    def act(self, prompts, greedy=False, generator=None, choices=None):
        """Sample (or argmax) one action per prompt. Returns the action token lists and, per row, the
        policy's records of those tokens (logprobs, values, entropy, topk) taken during generation.
        choices: per prompt, its available actions (needed, and used, by a constrained agent only; others ignore
        them)."""
        allowed = self._tries_of(choices, len(prompts))
        with M.autocast_ctx(self.device):
            actions, lp, v, stats = self.policy.generate([list(p) for p in prompts], self.max_action_tokens,
                                                         self.temperature, greedy, stop_id=self.stop,
                                                         generator=generator, stats_topk=TOPK, allowed=allowed)
        # one prefill per row, then one decode per further token
        self.forward_passes += sum(len(a) for a in actions) * self.policy.n_nets
        return actions, [dict(logprobs=lp[b], values=v[b], **stats[b]) for b in range(len(actions))]

    def _tries_of(self, choices, n):
        if not self.constrained:
            return None
        if choices is None or len(choices) != n:
            raise ValueError("a constrained agent needs the available actions of every prompt (choices=)")
        return [self.trie(ch) for ch in choices]

    def evaluate(self, net, idx, action_mask, choices, actions, temperature=None, topk=0, dist=False):
        """net.evaluate on packed rows (at the agent's temperature unless given), constrained to each row's
        available actions when the agent is."""
        allowed = self.allowed_mask(choices, actions, net.config.vocab_size) if self.constrained else None
        return net.evaluate(idx, temperature or self.temperature, topk=topk, action_mask=action_mask, allowed=allowed,
                            dist=dist)

    @torch.no_grad()
    def score(self, prompts, actions, models=("policy", "ref"), choices=None):
        """Teacher-forced per-token records of each (prompt, action) row, from one forward per model:
        the same evaluate() that PPO trains with, so old and new log-probs agree exactly. More rows than
        batch_size are scored batch_size at a time. choices: as for act()."""
        if len(prompts) > self.batch_size:
            B = self.batch_size
            return [r for c in range(0, len(prompts), B)
                    for r in self.score(prompts[c:c + B], actions[c:c + B], models,
                                        None if choices is None else choices[c:c + B])]
        idx, action_mask = M.pack(prompts, actions, self.pad)
        idx, action_mask = idx.to(self.device), action_mask.to(self.device)
        rows = [dict() for _ in prompts]
        for name in models:
            net = self.policy if name == "policy" else self.ref
            with M.autocast_ctx(self.device):
                lp, v, ent, topk = self.evaluate(net, idx, action_mask, choices, actions, topk=TOPK)
            self.forward_passes += len(prompts) * net.n_nets
            lp, v, ent, topk = lp.float().cpu(), v.float().cpu(), ent.float().cpu(), topk.float().cpu()
            for b, (p, a) in enumerate(zip(prompts, actions)):
                sl = slice(len(p), len(p) + len(a))  # the action tokens of row b
                if name == "policy":
                    rows[b].update(logprobs=lp[b, sl], values=v[b, sl], entropy=ent[b, sl], topk=topk[b, sl])
                else:
                    rows[b]["ref_logprobs"] = lp[b, sl]
        return rows

    def action_logprobs(self, states, model="ref"):
        """states: [(prompt tokens, action texts)]. Per state, a (k,) tensor: the log-prob of each action's own
        tokens under one network ("policy" or "ref") at the agent's temperature. The numbers of score(), for a
        fraction of the work: GPT.continuation_logprobs writes each prompt once for all its actions (a constrained
        agent renormalises every token over the state's trie, as score() does). States go through about batch_size
        actions at a time, in order of length (less padding)."""
        net, codes = self.policy if model == "policy" else self.ref, {}
        for _, texts in states:
            for a in texts:
                if a not in codes:
                    codes[a] = tokenizer.encode_action(self.enc, a)
        acts = [[codes[a] for a in texts] for _, texts in states]
        order = sorted(range(len(states)), key=lambda i: len(states[i][0]) + sum(map(len, acts[i])))
        out, chunk, n = [None] * len(states), [], 0  # n: the actions in the chunk
        for k, i in enumerate(order):
            chunk.append(i)
            n += len(acts[i])
            if k + 1 == len(order) or n + len(acts[order[k + 1]]) > self.batch_size:
                with M.autocast_ctx(self.device):
                    lps = net.continuation_logprobs([states[j][0] for j in chunk], [acts[j] for j in chunk],
                                                    self.temperature, self._tries_of([states[j][1] for j in chunk],
                                                                                     len(chunk)))
                for j, lp in zip(chunk, lps):
                    out[j] = lp
                self.forward_passes += len(chunk) * net.n_nets  # one row per state
                chunk, n = [], 0
        return out


def make_agent(cfg, policy, ref, enc):
    """The Agent of a run (train.Config): its networks with the run's beta, temperature, sizes and --actions."""
    return Agent(policy, ref, enc, cfg.beta, cfg.temperature, cfg.max_action_tokens, cfg.batch_size,
                 constrained=cfg.actions == "available")


def rollout(agent, env_list, greedy=False, generator=None, oracle=False, keep_states=False, fresh=True,
            progress=None, monitor=None, noop=False, gap=False):
    """Run every environment to the end, batched. fresh=False continues from each env's current state.
    Returns one Episode per environment, in order. Each model call takes rows of similar prompt length
    (sorted), so that little of the batch is padding. monitor(episode, proposed Step) -> bool, called before
    each action is executed: True stops the agent and the scripted expert finishes the episode from there
    (ep.handover = the step it took over at; the proposed action is not executed nor recorded).
    noop: also read every invalid step as the no-op it is (read_noop, for "pa_noop"). gap: read every step against
    the actions available at its state (read_noop: each one's gap to the best of them, for "pa_gap", and an invalid
    one as the no-op too); it scores every available action under both networks, about half as long again."""
    obs = [e.reset() if fresh else e.obs() for e in env_list]
    eps = [Episode(e.task_id, e.seed, e.unseen) for e in env_list]
    active = list(range(len(env_list)))
    while active:
        prompts = {i: agent.encode(obs[i]) for i in active}
        order = sorted(active, key=lambda i: len(prompts[i]))
        for c in range(0, len(order), agent.batch_size):
            chunk = order[c:c + agent.batch_size]
            choices = [tuple(env_list[i].actions()) for i in chunk] if agent.constrained else None
            actions, rows = agent.act([prompts[i] for i in chunk], greedy, generator, choices)
            refs = agent.score([prompts[i] for i in chunk], actions, ("ref",), choices)
            read = []  # (step, the actions that were available) of this chunk's steps
            for j, i in enumerate(chunk):
                env, text = env_list[i], agent.decode(actions[j])
                st = Step(prompts[i], actions[j], text, **rows[j], **refs[j],
                          choices=choices[j] if choices else None)
                if oracle:
                    st.qstar, st.vstar = env.q_star(text), env.optimal_value()
                if keep_states:
                    st.env = env.clone()
                if monitor is not None and monitor(eps[i], st):  # hand over: one request for help
                    eps[i].handover = len(eps[i].steps)
                    eps[i].reward, eps[i].truncated = expert_finish(env)
                    eps[i].done = True
                    continue
                available = tuple(env.actions()) if noop or gap else None
                obs[i], st.reward, st.done, info = env.step(text)
                st.valid = info["valid"]
                if gap or (noop and not st.valid):
                    read.append((st, available))
                ep = eps[i]
                ep.steps.append(st)
                if st.done:
                    ep.done, ep.reward, ep.truncated = True, st.reward, info["truncated"]
            read_noop(agent, read)
            if progress is not None:
                progress.update(len(chunk))
        active = [i for i in active if not eps[i].done]
    return eps


def read_noop(agent, steps):
    """steps: (Step, the actions available at its state). Scores every available action under both networks, at
    one prompt per state and network (Agent.action_logprobs), and sets two readings of each step (rollout passes
    only the invalid ones unless asked for the gap):
    - best_log_ratio: the largest log pi(a|s) - log pi_ref(a|s) over the available actions a (nan where there
      are none). At the optimum, beta times it less the step's own is max_a Q*(s, a) - Q*(s, a_t), what the step
      gave up against the best action there; a trained policy's own samples favour the actions whose log-ratio
      it overestimates, and that upward error cancels where it took the action it rates best ("pa_gap").
    - noop_log_ratio, on steps whose text was not an action. Every such text does the same thing (nothing, at the
      cost of a step), so to the environment they are one action, the no-op, and pi*'s log-ratio is the same for
      all of them: log of (1 - the available actions' mass) under pi* over the same under pi_ref. A trained policy
      was never taught how to share that mass among the texts, so the log-ratio of the one it wrote is noise
      around it. The no-op's log-ratio is log (1 - sum_a pi(a|s)) - log (1 - sum_a pi_ref(a|s)) (nan where
      either mass is below 1e-9).
    Both are 0 without a forward pass where the policy is its own reference (the reference acting). A constrained
    agent's actions are scored as it draws them (Agent.action_logprobs); it writes no invalid text to read."""
    if agent.policy is agent.ref:
        for st, _ in steps:
            st.best_log_ratio = 0.0
            if not st.valid:
                st.noop_log_ratio = 0.0
        return
    if not steps:
        return
    states = [(st.prompt, available) for st, available in steps]
    lps = [[lp.double() for lp in agent.action_logprobs(states, net)] for net in ("policy", "ref")]
    for (st, _), lp, lq in zip(steps, *lps):
        st.best_log_ratio = float((lp - lq).max()) if len(lp) else math.nan
        if not st.valid:
            st.noop_log_ratio = noop_log_ratio(1.0 - float(lp.exp().sum()), 1.0 - float(lq.exp().sum()))


def noop_log_ratio(rest, rest_ref):
    """log pi(no action | s) / pi_ref(no action | s) from the mass each network leaves off the available actions;
    nan where either is below 1e-9 (no mass to compare)."""
    return math.log(rest / rest_ref) if min(rest, rest_ref) > 1e-9 else math.nan


def expert_finish(env):
    """The scripted expert plays env to its end. Returns (final reward, truncated)."""
    r, info = 0.0, {"truncated": False}
    while not env.done:
        _, r, _, info = env.step(envs.expert_action(env))
    return r, info["truncated"]


def halting_monitor(selector, how, threshold, beta, rng=None):
    """A monitor for rollout(): before each action, the running score (pa.monitor_scores, `how`) of the step
    scores so far, the proposed action's included, hands over when it is below threshold. The scorer must
    score an action before it is executed (not value_td); the oracle's needs rollout(..., oracle=True)."""
    if not SELECTORS[selector].before_acting:
        raise ValueError(f"selector {selector!r} needs the action executed: it cannot stop the agent before it")
    seen = {}  # id(episode) -> the step scores so far, each computed once (a random scorer draws once per step)

    def fire(ep, st):
        scores = seen.setdefault(id(ep), [])
        scores.append(step_scores(Episode(0, 0, False, [st]), selector, beta, rng)[0])  # executed next, unless
        return pa.monitor_scores(scores, how)[-1] < threshold                           # this hands over
    return fire


def score_actions(agent, states):
    """EVERY available action of each state (an env), teacher-forced through both models: a list of Steps per
    state, in display order (fidelity top-1 and the diagnostics compare scorers over all candidates)."""
    prompts, actions, owner, choices = [], [], [], []
    for i, env in enumerate(states):
        p, acts = agent.encode(env.obs()), tuple(env.actions())
        for a in acts:
            prompts.append(p)
            actions.append(tokenizer.encode_action(agent.enc, a))
            owner.append((i, a))
            choices.append(acts)
    per_state = [[] for _ in states]
    for (i, a), p, act, ch, row in zip(owner, prompts, actions, choices, agent.score(prompts, actions, choices=choices)):
        per_state[i].append(Step(p, act, a, **row, choices=ch if agent.constrained else None))
    return per_state


def make_envs(env_name, split, tasks, seeds):
    """One environment per (task, seed) pair, task-major: [t0s0, t0s1, ..., t1s0, ...]."""
    return [envs.make_env(env_name, split=split, task=t, seed=s) for t in tasks for s in seeds]

# -----------------------------------------------------------------------------
# step scores: one float per step of an episode, for every selector, from one table


def _tokens(steps, *names):
    """Per-token fields of the steps, right-padded to (S, k), followed by the action mask (S, k)."""
    k = max(len(s.action) for s in steps)
    mask = torch.zeros(len(steps), k)
    for i, s in enumerate(steps):
        mask[i, :len(s.action)] = 1.0
    out = []
    for name in names:
        xs = [getattr(s, name) for s in steps]
        x = torch.zeros((len(xs), k) + tuple(xs[0].shape[1:]))
        for i, v in enumerate(xs):
            x[i, :len(v)] = v
        out.append(x)
    return out + [mask]


def noop_ratio(steps, selector):
    """Each step's log-ratio with an invalid text read as the no-op (read_noop): the log-ratio of the action taken,
    or of writing no action at all where the text was none (its own log-ratio where that mass is nan)."""
    if any(s.noop_log_ratio is None for s in steps if not s.valid):
        raise ValueError(f"selector {selector!r} needs episodes collected with rollout(..., noop=True)")
    return [s.log_ratio if s.valid or math.isnan(s.noop_log_ratio) else s.noop_log_ratio for s in steps]


def _pa_noop(steps, beta):
    """PA with each invalid text read as the no-op: beta times noop_ratio."""
    return [beta * x for x in noop_ratio(steps, "pa_noop")]


def _pa_gap(steps, beta):
    """Minus beta times each step's gap to the best action available at its state (read_noop), its own log-ratio
    read as in _pa_noop: 0 where it took the action it rates best (or an invalid text read above every action),
    negative otherwise. At the optimum, -(max_a Q*(s, a) - Q*(s, a_t)): what the step gave up there."""
    if any(s.best_log_ratio is None for s in steps):
        raise ValueError("selector 'pa_gap' needs episodes collected with rollout(..., gap=True)")
    return [beta * min(0.0, x - s.best_log_ratio) if not math.isnan(s.best_log_ratio) else 0.0
            for s, x in zip(steps, noop_ratio(steps, "pa_gap"))]


def _value_td(steps, mc_values=None, **_):
    """ "Value after minus value before", V(s_t+1) - V(s_t), by the critic or by Monte Carlo (mc_values).
    Without the environment's reward r_t: a selector does not know the outcome (with it, the sum over a
    trajectory telescopes to the final reward minus V(s_0): an outcome oracle in disguise). After the final
    action there is no next state: the critic's value at the action's last token (it has read the whole
    action: ~Q(s, a)) stands in; Monte Carlo has nothing there without executing it."""
    if mc_values is None:
        v, last = [float(s.values[0]) for s in steps], float(steps[-1].values[-1])
    else:
        v = list(mc_values)
        last = v[-1]
    return pa.value_td(torch.zeros(len(v)), torch.tensor(v), torch.tensor(v[1:] + [last]))


Selector = namedtuple("Selector", "score needs_ref before_acting")  # score(steps, beta=, rng=, mc_values=)
SELECTORS = {  # name -> how it scores each step; whether it needs the reference; can it score unexecuted actions
    "pa": Selector(lambda st, beta, **_: pa.progress_advantage(*_tokens(st, "logprobs", "ref_logprobs"), beta),
                   True, True),
    # the same with every invalid text's log-ratio replaced by the no-op's: known only once the text is executed
    "pa_noop": Selector(lambda st, beta, **_: _pa_noop(st, beta), True, False),
    # minus the gap between the action taken and the best available one, both read like pa_noop
    "pa_gap": Selector(lambda st, beta, **_: _pa_gap(st, beta), True, False),
    "logprob": Selector(lambda st, **_: pa.logprob_sum(*_tokens(st, "logprobs")), False, True),
    "logprob_mean": Selector(lambda st, **_: pa.logprob_mean(*_tokens(st, "logprobs")), False, True),
    "ref_logprob": Selector(lambda st, **_: pa.ref_logprob_sum(*_tokens(st, "ref_logprobs")), True, True),
    "confidence": Selector(lambda st, **_: pa.confidence(*_tokens(st, "topk")), False, True),
    # negative mean entropy: higher = more certain
    "entropy": Selector(lambda st, **_: -pa.logprob_mean(*_tokens(st, "entropy")), False, True),
    "value_td": Selector(lambda st, **_: _value_td(st), False, False),
    "mc": Selector(lambda st, mc_values, **_: _value_td(st, mc_values), False, False),
    # zero-mean, so that a running sum (beam search) does not favour longer paths
    "random": Selector(lambda st, rng, **_: [rng.random() - 0.5 for _ in st], False, True),
    # the true optimal advantage A*(s, a) = Q*(s, a) - V*(s)
    "oracle": Selector(lambda st, **_: [s.qstar - s.vstar for s in st], False, True),
}
BEAM_SELECTORS = ("pa", "logprob", "ref_logprob", "confidence", "random", "oracle")


def step_scores(ep, selector, beta, rng=None, mc_values=None):
    """Per-step scores of an episode. mc_values: the Monte Carlo V(s_t) of each step (selector "mc")."""
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; valid: {', '.join(SELECTORS)}")
    out = SELECTORS[selector].score(ep.steps, beta=beta, rng=rng, mc_values=mc_values)
    return out.tolist() if isinstance(out, torch.Tensor) else out


def trajectory_score(ep, selector, how, beta, rng=None, mc_values=None):
    """One number per episode: the step scores aggregated by `how` (sum, mean, min, last).
    The oracle's trajectory score is the verified outcome itself (so best-of-N by it is Pass@N)."""
    if selector == "oracle":
        return ep.reward
    if selector == "random":  # one draw per trajectory: any aggregate of per-step draws depends on the length
        return rng.random()
    return pa.aggregate(step_scores(ep, selector, beta, rng, mc_values), how)


def mc_state_values(agent, episodes, n, generator=None, beta=0.0, seed=1_000_003):
    """Monte Carlo V(s_t) for every step of every episode: the mean return of n policy rollouts from a clone of
    the state (needs episodes collected with keep_states=True). The return is the final reward, less beta times
    the rollout's own summed log-ratio when beta > 0 (the KL-regularised value PPO maximises). seed: the first
    of the rollouts' transition seeds. Returns a list per episode."""
    clones = [s.env.clone() for ep in episodes for s in ep.steps for _ in range(n)]
    for k, c in enumerate(clones):  # fresh transition randomness for every rollout
        c.rng = np.random.default_rng(seed + k)
    outs = rollout(agent, clones, generator=generator, fresh=False)
    returns, k, values = [o.reward - beta * sum(s.log_ratio for s in o.steps) for o in outs], 0, []
    for ep in episodes:
        vs = []
        for _ in ep.steps:
            vs.append(sum(returns[k:k + n]) / n)
            k += n
        values.append(vs)
    return values

# -----------------------------------------------------------------------------
# best-of-N


def best_of_n(groups, scores, ns):
    """groups: list over tasks of N episodes; scores: the same shape of trajectory scores.
    For each n in ns the N samples are cut into N // n disjoint groups of n; each group keeps its
    highest-scoring episode (first on ties). Returns {n: mean success}, {n: Mean@n}, {n: Pass@n}."""
    sel, mean, pas = {}, {}, {}
    for n in ns:
        s_sel, s_mean, s_pass, count = 0.0, 0.0, 0.0, 0
        for eps, sc in zip(groups, scores):
            for g in range(len(eps) // n):
                block, bsc = eps[g * n:(g + 1) * n], sc[g * n:(g + 1) * n]
                best = max(range(n), key=lambda i: bsc[i])  # max() keeps the first on ties
                s_sel += block[best].success
                s_mean += sum(e.success for e in block) / n
                s_pass += any(e.success for e in block)
                count += 1
        sel[n], mean[n], pas[n] = s_sel / count, s_mean / count, s_pass / count
    return sel, mean, pas

# -----------------------------------------------------------------------------
# step-level beam search


@dataclass
class Beam:
    env: object
    score: float = 0.0
    steps: list = field(default_factory=list)

    @property
    def done(self):
        return self.env.done

    @property
    def reward(self):  # the final reward once finished (only the last action of an episode pays)
        return self.steps[-1].reward if self.done and self.steps else 0.0

    @property
    def success(self):
        return self.reward == 1.0


def keep_best(cands, B, selector, beta, rng=None):
    """Score one task's candidates and keep the B best. cands: (parent Beam, Step) pairs in order, the Step None
    for a beam that has finished (it competes with its own score). A candidate's score is its parent's
    cumulative score plus the step score of its action by `selector` (step_scores of a one-step Episode).
    Returns the B best as (score, parent, step), highest first; on ties the earlier candidate first."""
    scored = [(parent.score if st is None else
               parent.score + step_scores(Episode(0, 0, False, [st]), selector, beta, rng)[0], parent, st)
              for parent, st in cands]
    return sorted(scored, key=lambda c: -c[0])[:B]  # sorted() is stable: earlier candidates win ties


def beam_search(agent, roots, B, K, selector, generator=None, rng=None):
    """Step-level beam search over many tasks at once. At each depth every live beam samples K candidate
    actions from the policy (more while a task has fewer than B live beams, so that each depth costs
    B * K samples, as best-of-(B * K) does); each candidate is scored WITHOUT being executed (PA needs only the two models'
    log-probs; the oracle looks up Q*); the B best beams of each task by cumulative score are kept, and
    only then is each kept action executed, in a clone of its parent's environment. So an irreversible
    action (buy now) only ever happens in a kept beam. Finished beams keep their slot and compete on their
    final cumulative score. Returns, per task, the finished beam with the best score (an Episode-like
    Beam; its env holds the outcome) and the number of actions executed."""
    beams = [[Beam(env=r)] for r in roots]
    for r in roots:
        r.reset()
    executed = 0
    while True:
        live = [(t, b) for t, bs in enumerate(beams) for b in bs if not b.done]
        if not live:
            break
        # every task samples B * K candidates per depth (the budget of best-of-(B * K)), spread over its live
        # beams: K each once B beams are live, more each while fewer are (at the root: all B * K from one)
        n_live = [sum(not b.done for b in bs) for bs in beams]
        owner = [(t, b) for t, b in live for _ in range(max(K, (B * K) // n_live[t]))]
        prompts = [agent.encode(b.env.obs()) for _, b in owner]
        choices = [tuple(b.env.actions()) for _, b in owner] if agent.constrained else None
        actions, rows = agent.act(prompts, greedy=False, generator=generator, choices=choices)
        if SELECTORS[selector].needs_ref:  # one more forward, of the reference
            for row, ref in zip(rows, agent.score(prompts, actions, ("ref",), choices)):
                row.update(ref)
        cands = [[(b, None) for b in bs if b.done] for bs in beams]  # finished beams stay
        seen = set()
        for j, (a, row) in enumerate(zip(actions, rows)):
            t, parent = owner[j]
            if (id(parent), tuple(a)) in seen:  # a duplicate sample adds nothing to the beam
                continue
            seen.add((id(parent), tuple(a)))
            st = Step(prompts[j], a, agent.decode(a), ref_logprobs=row.get("ref_logprobs", row["logprobs"]),
                      **{k: v for k, v in row.items() if k != "ref_logprobs"}, choices=choices[j] if choices else None)
            if selector == "oracle":
                st.qstar, st.vstar = parent.env.q_star(st.text), parent.env.optimal_value()
            cands[t].append((parent, st))
        for t in range(len(beams)):
            new = []
            for score, parent, st in keep_best(cands[t], B, selector, agent.beta, rng):
                if st is None:  # an already finished beam
                    new.append(parent)
                    continue
                env = parent.env.clone()
                _, st.reward, st.done, info = env.step(st.text)  # executed only now, in a kept beam
                st.valid = info["valid"]
                executed += 1
                new.append(Beam(env, score, parent.steps + [st]))
            beams[t] = new
    best = [max(bs, key=lambda b: b.score) for bs in beams]
    return best, executed

# -----------------------------------------------------------------------------
# loading a trained run, the progress meter, the command line


def load_agent(ckpt, ref=None, device="auto", batch_size=256):
    """The PPO policy of a checkpoint, its reference (ref.pt beside it unless given) and its beta.
    Returns (agent, env_name, ref_path, device); a bad file raises model.CheckpointError."""
    device = M.get_device(device)
    ck = M.load_checkpoint(ckpt)
    ref = ref or os.path.join(os.path.dirname(os.path.abspath(ckpt)), "ref.pt")
    nets = [load_net(path, ck, device) for path in (ckpt, ref)]
    tc = ck.get("train_config", {})
    agent = Agent(nets[0], nets[1], tokenizer.tokenizer_from_spec(ck["tokenizer"]), ck["beta"], tc.get("temperature", 1.0),
                  tc.get("max_action_tokens", 16), batch_size, constrained=tc.get("actions", "any") == "available")
    return agent, ck["env_name"], ref, device


def load_net(path, like, device):
    """The network of a checkpoint, refused unless it shares the world and tokenizer of the checkpoint `like`."""
    c = M.load_checkpoint(path, env_name=like["env_name"], tokenizer_spec=like["tokenizer"])
    return M.net_of(c, device).eval()


@dataclass
class Run:
    """A trained run, ready to evaluate: the PPO agent, its reference as an agent of its own (the reference
    acting, scored against itself), the world, and one sampling generator shared by every rollout."""
    ppo: Agent
    ref: Agent
    env_name: str
    gen: torch.Generator
    ref_path: str = None
    gap: bool = False  # read every step of the episodes against its state's best action too (for "pa_gap")

    def episodes(self, agent, split, tasks, seeds, greedy=False, keep_states=False, read=True):
        """Oracle-annotated episodes of `agent` on (task, seed) pairs of a split, task-major. read: the steps are
        also read against their states' available actions (rollout's noop, and its gap where self.gap says so);
        pass False for episodes that no step scorer reads."""
        return rollout(agent, make_envs(self.env_name, split, tasks, seeds), greedy, self.gen, oracle=True,
                       keep_states=keep_states, noop=read and not agent.constrained, gap=read and self.gap)


def load_run(ckpt, ref=None, device="auto", batch_size=256, seed=0, pa_ref=None, ratio_scale=1.0):
    """pa_ref: another checkpoint as the reference of every PA the PPO agent computes (say an early behaviour
    cloning checkpoint or a weight merge, see prm.py); the reference that acts stays the RL stage's own.
    ratio_scale S != 1: the PPO agent acts, and PA reads, the policy moved S times as far from the reference along
    its own log-ratio, token by token (model.RatioScaled: pi_ref (pi / pi_ref)^S, renormalised)."""
    agent, env_name, ref_path, device = load_agent(ckpt, ref, device, batch_size)
    if ratio_scale != 1.0:
        agent.policy = M.RatioScaled(agent.policy, agent.ref, ratio_scale)
    ref_agent = agent.like(agent.ref, agent.ref)
    if pa_ref:
        agent.ref = load_net(pa_ref, M.load_checkpoint(ckpt), device)
    return Run(agent, ref_agent, env_name, torch.Generator(device=device).manual_seed(seed), ref_path)


def show(agent, env_name, n, split="test", generator=None, monitor=None):
    """Print n greedy episodes step by step with each step's PA beside the oracle's A*: the press
    article's "progress meter". Green = progress (PA > 0), red = regress (PA < 0), on a terminal.
    monitor = (how, threshold): also mark where PA's halting monitor would stop (monitor.py) and the oracle's
    first critical mistake."""
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    paint = lambda x, s: (f"\033[{32 if x > 0 else 31}m{s}\033[0m" if color and abs(x) > 1e-3 else s)
    for ep in rollout(agent, make_envs(env_name, split, range(n), [0]), greedy=True, generator=generator,
                      oracle=True):
        env = envs.make_env(env_name, split, ep.task, ep.seed)
        print("\n" + env.reset().split("\n")[0] + ("   [unseen]" if ep.unseen else ""))
        cum, scores = 0.0, step_scores(ep, "pa", agent.beta)
        stop = pa.first_below(pa.monitor_scores(scores, monitor[0]), monitor[1]) if monitor else None
        mistake = next((t for t, s in enumerate(ep.steps) if s.qstar - s.vstar < -envs.DELTA), None)
        for t, (s, x) in enumerate(zip(ep.steps, scores)):
            cum += x
            bar = ("+" if x > 0 else "-") * min(20, int(abs(x) / 0.05 + 0.5))
            notes = ([" <- the monitor asks for help here"] if t == stop else []) + \
                ([" <- first critical mistake"] if monitor and t == mistake else [])
            print(paint(x, f"  {t:2d} PA {x:+.3f} (sum {cum:+.3f})  A* {s.qstar - s.vstar:+.3f}  "
                           f"{s.text:32s} {bar}") + "".join(notes))
        print(f"  -> reward {ep.reward:.2f}{' (success)' if ep.success else ''}"
              f"{' (out of steps)' if ep.truncated else ''}")


def main(argv):
    import argparse
    p = argparse.ArgumentParser(description="The progress meter: test episodes of a trained PPO checkpoint step "
                                            "by step, each step's PA beside the oracle's A*. (The evaluation "
                                            "report and checks: python report.py.)")
    M.add_policy_arg(p)
    p.add_argument("--ref", default=None, help="the reference checkpoint, if not beside --ckpt")
    p.add_argument("--pa_ref", default=None, help="score PA against this checkpoint instead (an early or merged "
                   "reference: python train.py --stage=prm)")
    p.add_argument("--show", type=int, default=3, help="how many test episodes to print")
    p.add_argument("--monitor", action="store_true", help="mark where PA's halting monitor would ask for help "
                   "(its choice at the headline budget of monitor.json beside --ckpt: python monitor.py)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if not 1 <= args.show <= envs.N_TASKS["test"]:
        p.error(f"--show takes 1 to {envs.N_TASKS['test']} episodes, not {args.show}")
    try:
        M.get_device(args.device)
    except ValueError as e:
        p.error(str(e))
    try:
        agent, env_name, _, device = load_agent(args.ckpt, args.ref, args.device)
        if args.pa_ref:
            agent.ref = load_net(args.pa_ref, M.load_checkpoint(args.ckpt), device)
    except M.CheckpointError as e:
        raise SystemExit(f"search.py: {e}")
    mon = None
    if args.monitor:
        path = os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "monitor.json")
        if not os.path.exists(path):
            raise SystemExit(f"search.py: no {path}: run python monitor.py --ckpt {args.ckpt} first")
        if args.pa_ref:
            raise SystemExit("search.py: --monitor's threshold was fitted to PA against the run's own reference; "
                             "drop --pa_ref")
        saved = json.load(open(path))
        h = saved["rows"]["pa"][str(saved["headline"])]
        mon = (h["how"], h["threshold"])
        print(f"PA's monitor: asks for help when its running {h['how']} is below {h['threshold']:+.4f}"
              if h["threshold"] > -math.inf else "PA's monitor: on validation, no threshold fit the budget: it never fires")
    show(agent, env_name, args.show, generator=torch.Generator(device=device).manual_seed(0), monitor=mon)


if __name__ == "__main__":
    main(sys.argv[1:])
