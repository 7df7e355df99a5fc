"""
search.py: what a trained run's step scores are used for: best-of-N, PA-guided step-level beam search, the
halting monitor and the progress meter.

Every step scorer (SELECTORS: PA and its baselines) reads the records that agents.rollout leaves, one float per
step, without running the model again; beam search scores candidate actions the same way before executing them.

    python search.py --ckpt out/ppo_avg.pt --show 3   # the "progress meter": 3 test episodes step by step
    python report.py --ckpt out/ppo_avg.pt            # the evaluation report, which uses all of this
"""
import json
import math
import os
import sys
from collections import namedtuple
from dataclasses import dataclass, field

import torch

import checkpoint
import envs
import model as M
import pa
from agents import Episode, Step, load_agent, load_net, make_envs, rollout

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



def halting_monitor(selector, how, threshold, beta, rng=None):
    """A monitor for rollout(): before each action, the running score (pa.monitor_scores, `how`) of the step
    scores so far, the proposed action's included, hands over when it is below threshold. The scorer must
    score an action before it is executed (not value_td); the oracle's needs rollout(..., oracle=True)."""
    if not SELECTORS[selector].before_acting:
        raise ValueError(f"selector {selector!r} needs the action executed: it cannot stop the agent before it")
    seen = {}  # id(episode) -> (the episode, held so that no later one gets its id; its step scores so far, each
    #            computed once: a random scorer draws once per step)

    def fire(ep, st):
        scores = seen.setdefault(id(ep), (ep, []))[1]
        scores.append(step_scores(Episode(0, 0, False, [st]), selector, beta, rng)[0])  # executed next, unless
        return pa.monitor_scores(scores, how)[-1] < threshold                           # this hands over
    return fire


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
    """Step-level beam search over many tasks at once. At each depth every live beam of a task samples
    B * K // (its live beams) candidate actions from the policy: K each once B beams are live, all B * K at the
    root, at most the B * K samples of best-of-(B * K) (3 live beams of B = 4, K = 2 draw 2 each; the report
    counts the forward passes). Each candidate is scored WITHOUT being executed (PA needs only the two models'
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
        # B * K // (live beams) candidates from each live beam of a task (never fewer than K: at most B are live)
        n_live = [sum(not b.done for b in bs) for bs in beams]
        owner = [(t, b) for t, b in live for _ in range((B * K) // n_live[t])]
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
# the progress meter, the command line


def show(agent, env_name, n, split="test", monitor=None):
    """Print n greedy episodes step by step with each step's PA beside the oracle's A*: a "progress meter".
    Green = progress (PA > 0), red = regress (PA < 0), on a terminal.
    monitor = (how, threshold): also mark where PA's halting monitor would stop (monitor.py) and the oracle's
    first critical mistake."""
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    paint = lambda x, s: (f"\033[{32 if x > 0 else 31}m{s}\033[0m" if color and abs(x) > 1e-3 else s)
    for ep in rollout(agent, make_envs(env_name, split, range(n), [0]), greedy=True, oracle=True):
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
    checkpoint.add_policy_arg(p)
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
            agent.ref = load_net(args.pa_ref, checkpoint.load(args.ckpt), device)
    except checkpoint.CheckpointError as e:
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
    show(agent, env_name, args.show, monitor=mon)


if __name__ == "__main__":
    main(sys.argv[1:])
