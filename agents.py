"""
agents.py: the agent (the policy, its frozen reference and the tokenizer) and the loop that runs it.

The agent loop (rollout) is shared by training and evaluation: every environment in a batch is stepped
in lock-step, one model call per step for all of them, and each step leaves a record (Step) with the prompt and
action tokens, the policy's and the reference's per-token log-probs, the critic's values, the reward and
(in evaluation) the oracle's Q*(s, a) and V*(s). Everything the step scorers of search.py need is in there,
so best-of-N, failure prediction and attribution never run the model again.

Compute is counted as model forward passes per sequence (a prefill or a one-token decode of one row = 1)
plus environment steps, so that search methods can be compared at matched compute.

    python search.py --ckpt out/ppo_avg.pt --show 3   # 3 test episodes of the loop, step by step
"""
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

import checkpoint
import envs
import model as M
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
        """Teacher-forced per-token records of each (prompt, action) row, from one forward per model (the
        evaluate() that PPO trains with). More rows than batch_size are scored batch_size at a time. choices: as
        for act()."""
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
    """The Agent of a run (config.Config): its networks with the run's beta, temperature, sizes and --actions."""
    return Agent(policy, ref, enc, cfg.beta, cfg.temperature, cfg.max_action_tokens, cfg.batch_size,
                 constrained=cfg.actions == "available")


def rollout(agent, env_list, greedy=False, generator=None, oracle=False, keep_states=False, fresh=True,
            progress=None, monitor=None, noop=False, gap=False):
    """Run every environment to the end, batched. fresh=False continues from each env's current state.
    Returns one Episode per environment, in order. Each model call takes rows of similar prompt length
    (sorted), so that little of the batch is padding; progress (a tqdm bar) counts the steps taken.
    monitor(episode, proposed Step) -> bool, called before each action is executed: True stops the agent and the
    scripted expert finishes the episode from there (ep.handover = the step it took over at; the proposed action
    is not executed nor recorded).
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
# Monte Carlo values: re-rollouts from the visited states


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
# loading a trained run


def load_agent(ckpt, ref=None, device="auto", batch_size=256):
    """The PPO policy of a checkpoint, its reference (ref.pt beside it unless given) and its beta.
    Returns (agent, env_name, ref_path, device); a bad file raises checkpoint.CheckpointError."""
    device = M.get_device(device)
    ck = checkpoint.load(ckpt)
    ref = ref or os.path.join(os.path.dirname(os.path.abspath(ckpt)), "ref.pt")
    nets = [load_net(path, ck, device) for path in (ckpt, ref)]
    tc = ck.get("train_config", {})
    agent = Agent(nets[0], nets[1], tokenizer.tokenizer_from_spec(ck["tokenizer"]), ck["beta"], tc.get("temperature", 1.0),
                  tc.get("max_action_tokens", 16), batch_size, constrained=tc.get("actions", "any") == "available")
    return agent, ck["env_name"], ref, device


def load_net(path, like, device):
    """The network of a checkpoint, refused unless it shares the world and tokenizer of the checkpoint `like`."""
    c = checkpoint.load(path, env_name=like["env_name"], tokenizer_spec=like["tokenizer"])
    return checkpoint.net_of(c, device).eval()


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
        agent.ref = load_net(pa_ref, checkpoint.load(ckpt), device)
    return Run(agent, ref_agent, env_name, torch.Generator(device=device).manual_seed(seed), ref_path)
