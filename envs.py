"""
envs.py: the environment every world shares: one Env with its dynamics, prompt, exact oracle and soft solver,
written once for every world (shop.py, house.py, travel.py), and the experts.

    env = make_env("shop", split="valid", task=3, seed=0)      # or "house", "travel"
    obs = env.reset(); obs, reward, done, info = env.step("search[leather jacket]")

For every world the dynamics are a pure function `transitions(task, state, action) -> [(prob, next_state,
reward, done)]` of a small hashable state (core, steps_left, note), where the task's core is the page and what
the agent has done (the shop's: page and page arguments); the prompt is a pure function of the state. The
oracle solves V*/Q* by memoised expectimax over states, with the memo stored on the shared Task object.
Randomness is exogenous and enumerable (result lists, stock-outs, appliances, sell-outs), so the oracle takes
exact expectations. Splits: "train" takes any task id; "valid" (200) and "test" (500) are fixed; odd test ids
are the "unseen" half.

    python envs.py                   # play a task at the keyboard (--env, --split, --task, --seed)
    python envs.py --demo            # an expert episode with Q* beside every available action
    python bench.py --only=envs      # env steps/s, oracle solve time, V*(s0), expert and noisy-expert scores
"""
import argparse
import math
import random
import sys

import numpy as np

import house
import shop
import travel
from worlds import N_TASKS, TIE, WORD_RE  # N_TASKS: the split sizes, for callers

DEFAULT_EPS = 0.3     # noisy expert: ~5 decisions per episode; measured on valid: 1 in 3 episodes succeeds
# A step is a "critical mistake" when it loses more than DELTA of optimal value. The cheapest irreversible
# error (one option, one attribute or the price wrong) scores 0.75-0.8 where 1.0 was available, so a wrong
# purchase loses >= 0.2 (measured along expert paths on valid: all of them, median 0.25); a wasted step only
# shrinks the slack that guards against stock-outs (median loss 0.04, 84% under 0.1). 0.1 separates the two.
DELTA = 0.1

# -----------------------------------------------------------------------------
# every world's dynamics, prompt and oracle, written once. state = (core, steps_left, note); core None = the end


def transitions(task, state, action):
    """[(prob, next_state, reward, done)] for any string `action` (not an available action = a no-op)."""
    core, steps, _ = state
    outs = task.moves(core).get(action) if core is not None else None
    if outs is None:
        outs = [(1.0, core, 0.0, task.invalid_note, False)]
    res = []
    for p, core2, r, note, done in outs:
        if done:
            res.append((p, (None, steps - 1, note), r, True))
        elif steps == 1:  # the budget is spent: truncation, scored 0
            res.append((p, (None, 0, task.timeout_note), 0.0, True))
        else:
            res.append((p, (core2, steps - 1, note), r, False))
    return res


def render(task, state):
    """The Markov prompt: instruction, note on the last action, page, steps left, available actions."""
    core, steps, note = state
    lines = [task.head] + (["note: " + note] if note else [])
    lines += task.page(core) if core is not None else [task.end_line]
    lines.append(f"steps left: {steps}")
    lines.append("actions: " + (" | ".join(task.moves(core)) if core is not None else ""))
    return "\n".join(lines)


def _q(task, steps, outs):
    """(Q*, expected steps to the end under the tie-broken greedy policy) of one action's outcomes."""
    q = length = 0.0
    for p, core2, r, _, done in outs:
        if done or steps == 1:
            q += p * (r if done else 0.0)
            length += p
        else:
            v, l = solve(task, core2, steps - 1)
            q += p * (r + v)
            length += p * (1.0 + l)
    return q, length


def solve(task, core, steps):
    """(V*, expected steps to finish) of a non-terminal state by memoised expectimax; the note does not
    change values, so the memo (on the task, shared by every env and clone of it) is keyed by (core, steps)."""
    key = (core, steps)
    hit = task.memo.get(key)
    if hit is None:
        if steps < task.bound(core):
            hit = (0.0, float(steps))  # nothing can pay in time: every action runs into truncation
        else:
            hit = (-1.0, 0.0)
            for outs in task.moves(core).values():  # a no-op is never better: V* grows with steps
                q, length = _q(task, steps, outs)
                if q > hit[0] + TIE or (q > hit[0] - TIE and length < hit[1] - TIE):
                    hit = (q, length)
        task.memo[key] = hit
    return hit


class SoftSolution:
    """The soft (KL-regularised) optimum of every state reachable from `state`, for any world given as functions
    of a state: its moves, its transitions [(p, next, r, done)] and its prompt. ref_probs is called once with
    [(prompt, actions)] of every reachable non-terminal state and returns [{action: prob}]; the leftover mass
    1 - sum goes to the no-op (the `invalid` text, standing for every text that is not an action). Soft Bellman:
        Q(s,a) = r + E[V(s')],   V(s) = beta * log sum_a pi_ref(a|s) exp(Q(s,a) / beta),   V(end) = 0,
    and the optimal policy is pi*(a|s) = pi_ref(a|s) exp((Q(s,a) - V(s)) / beta).
    States include their note, because the note changes the prompt the reference sees."""

    def __init__(self, state, moves_of, transitions_of, render_of, ref_probs, beta, invalid):
        self.transitions_of, self.beta, self.invalid, self.memo, self.qmemo = transitions_of, beta, invalid, {}, {}
        self.ref_memo, self.z_memo = {}, {}  # V^ref, for ref_advantage; log Z of one round of improvement
        order, seen = [state], {state}
        for st in order:  # every non-terminal state reachable from here, breadth first
            for a in list(moves_of(st)) + [invalid]:
                for _, s2, _, d in transitions_of(st, a):
                    if not d and s2 not in seen:
                        seen.add(s2)
                        order.append(s2)
        self.states = order
        self.pi_ref = dict(zip(order, ref_probs([(render_of(st), list(moves_of(st))) for st in order])))

    def ref_terms(self, st):
        """[(action, pi_ref)] at st, the no-op (self.invalid) carrying the leftover mass."""
        terms = [(a, p) for a, p in self.pi_ref[st].items() if p > 0]
        rest = 1.0 - sum(self.pi_ref[st].values())
        return terms + ([(self.invalid, rest)] if rest > 1e-12 else [])

    def q(self, st, a):
        if (st, a) not in self.qmemo:
            self.qmemo[st, a] = sum(p * (r + (0.0 if d else self.v(s2))) for p, s2, r, d in self.transitions_of(st, a))
        return self.qmemo[st, a]

    def v(self, st):
        if st not in self.memo:
            terms = [(pr, self.q(st, a)) for a, pr in self.ref_terms(st)]
            m = max(q for _, q in terms)  # log-sum-exp, shifted for stability
            self.memo[st] = m + self.beta * math.log(sum(pr * math.exp((q - m) / self.beta) for pr, q in terms))
        return self.memo[st]

    def ref_q(self, st, a):
        """Q^ref(s,a): the expected reward of a, then the reference's own play (no KL term)."""
        return sum(p * (r + (0.0 if d else self.ref_v(s2))) for p, s2, r, d in self.transitions_of(st, a))

    def ref_v(self, st):
        if st not in self.ref_memo:
            self.ref_memo[st] = sum(pr * self.ref_q(st, a) for a, pr in self.ref_terms(st))
        return self.ref_memo[st]

    def ref_advantage(self, st, a):
        """A^ref(s,a) = Q^ref(s,a) - V^ref(s): what one round of policy improvement from pi_ref would follow,
        where pi* follows Q - V. Any text that is not an action is the no-op."""
        return self.ref_q(st, a if a in self.pi_ref[st] else self.invalid) - self.ref_v(st)

    def log_ratio(self, st, a):
        """log pi*(a|s) / pi_ref(a|s) = (Q(s,a) - V(s)) / beta; any text that is not an action is the no-op."""
        return (self.q(st, a if a in self.pi_ref[st] else self.invalid) - self.v(st)) / self.beta

    def improved_log_ratio(self, st, a):
        """log pi_1(a|s) / pi_ref(a|s) of ONE round of soft policy improvement from the reference,
        pi_1(a|s) = pi_ref(a|s) exp(A^ref(s,a) / beta) / Z(s): the best policy for the KL-regularised objective if
        every later step were the reference's. pi* is what many such rounds converge to."""
        if st not in self.z_memo:
            terms = [(p, self.ref_advantage(st, b) / self.beta) for b, p in self.ref_terms(st)]
            m = max(x for _, x in terms)
            self.z_memo[st] = m + math.log(sum(p * math.exp(x - m) for p, x in terms))
        return self.ref_advantage(st, a) / self.beta - self.z_memo[st]

    def expect(self, st, policy="optimum", memo=None):
        """(success probability, expected reward, expected sum of log pi/pi_ref) of an episode from st under
        policy "optimum" (pi*), "improved" (pi_1), "reference" (pi_ref; the last is then 0), or any policy given
        as its log-ratio, a function (state, action) -> log pi/pi_ref. Under pi*, beta * KL = E[reward] - V(st)
        exactly."""
        log_ratio = policy if callable(policy) else {"optimum": self.log_ratio, "improved": self.improved_log_ratio,
                                                     "reference": lambda st, a: 0.0}[policy]
        memo = {} if memo is None else memo
        if st not in memo:
            out = [0.0, 0.0, 0.0]
            for a, pr in self.ref_terms(st):
                lr = log_ratio(st, a)
                w = pr * math.exp(lr)
                for p, s2, r, d in self.transitions_of(st, a):
                    nxt = (float(r == 1.0), 0.0, 0.0) if d else self.expect(s2, policy, memo)
                    out[0] += w * p * nxt[0]
                    out[1] += w * p * (r + nxt[1])
                    out[2] += w * p * (lr + nxt[2])
            memo[st] = tuple(out)
        return memo[st]


WORLDS = {  # name -> (the task of (split, task_id), the step budget)
    "shop": (shop.get_shop_task, shop.MAX_STEPS),
    "house": (house.get_house_task, house.HOUSE_MAX_STEPS),
    "travel": (travel.get_travel_task, travel.TRAVEL_MAX_STEPS),
}


class Env:
    """One episode of any world: reset / step / actions / clone, and the oracle's views of the current state.
    An invalid action is a counted no-op; exactly one uniform draw per step from the env's own generator."""
    invalid = "\x00"  # a text that is never an available action: the no-op in the soft solver

    def __init__(self, name="shop", split="train", task=0, seed=0, max_steps=None):
        if name not in WORLDS:
            raise ValueError(f"unknown environment {name!r} (available: {', '.join(WORLDS)})")
        get_task, budget = WORLDS[name]
        self.name, self.task, self.split, self.task_id = name, get_task(split, task), split, task
        self.max_steps = max_steps or budget
        self.seed, self.rng = seed, np.random.default_rng(seed)
        self.reset()

    def reset(self):
        self.state, self.done = (self.task.start, self.max_steps, ""), False
        return self.obs()

    def obs(self):
        return render(self.task, self.state)

    def actions(self):
        return [] if self.done else list(self.task.moves(self.state[0]))

    def step(self, action):
        if self.done:  # stepping a finished episode is harmless
            return self.obs(), 0.0, True, dict(valid=False, truncated=False, success=False, n_outcomes=0)
        action = action if isinstance(action, str) else str(action)
        valid = action in self.task.moves(self.state[0])
        outs = transitions(self.task, self.state, action)
        u, i = self.rng.random(), 0  # exactly one uniform per step, so replays with the same seed agree
        while i < len(outs) - 1 and u >= outs[i][0]:
            u -= outs[i][0]
            i += 1
        _, self.state, reward, self.done = outs[i]
        info = dict(valid=valid, truncated=self.done and self.state[2] == self.task.timeout_note,
                    success=self.done and reward == 1.0, n_outcomes=len(outs))
        return self.obs(), reward, self.done, info

    def clone(self):
        c = object.__new__(type(self))
        c.__dict__.update(self.__dict__)  # the task (and its caches) is shared, the state tuple is immutable
        c.rng = np.random.default_rng()
        c.rng.bit_generator.state = self.rng.bit_generator.state
        return c

    # --- oracle views of the current state
    def q_table(self):
        """action -> (Q*, expected steps to finish), in display order."""
        if self.done:
            return {}
        core, steps, _ = self.state
        return {a: _q(self.task, steps, outs) for a, outs in self.task.moves(core).items()}

    def optimal_q(self):
        return {a: q for a, (q, _) in self.q_table().items()}

    def optimal_value(self):
        return max(self.optimal_q().values(), default=0.0)

    def q_star(self, text):
        """Q*(s, text) for any string (one that is not an available action is the no-op)."""
        if self.done:
            return 0.0
        return sum(p * (r + (0.0 if d else solve(self.task, s[0], s[1])[0]))
                   for p, s, r, d in transitions(self.task, self.state, text))

    def is_irreversible(self, text):
        return not self.done and self.task.irreversible(self.state[0], text)

    def soft_solution(self, ref_probs, beta):
        """The soft (KL-regularised) optimum of every state reachable from here, for the reference policy
        `ref_probs` (see SoftSolution)."""
        return SoftSolution(self.state, lambda st: self.task.moves(st[0]),
                            lambda st, a: transitions(self.task, st, a), lambda st: render(self.task, st),
                            ref_probs, beta, self.invalid)

    def soft_optimal_q(self, ref_probs, beta):
        """Soft optimal Q of every available action, plus key None -> soft V."""
        if self.done:
            return {None: 0.0}
        sol = self.soft_solution(ref_probs, beta)
        return {**{a: sol.q(self.state, a) for a in self.actions()}, None: sol.v(self.state)}

    @property
    def steps_left(self):
        return self.state[1]

    @property
    def unseen(self):
        return self.task.unseen

    def __repr__(self):
        return (f"Env({self.name!r}, split={self.split!r}, task={self.task_id}, seed={self.seed}, "
                f"steps_left={self.steps_left}, done={self.done})")


def make_env(name="shop", split="train", task=0, seed=0, max_steps=None):
    """max_steps=None: the world's own budget (shop 10, house 12, travel 10)."""
    return Env(name, split, task, seed, max_steps)


# -----------------------------------------------------------------------------
# experts, critical mistakes, vocabulary

def expert_action(env):
    """The oracle's greedy action: highest Q*, then fewest expected steps, then the one repeating the most
    words of the instruction (a tie-break a learner can see: search[full query] over search[part of it]),
    then display order."""
    words, best, key = set(WORD_RE.findall(env.task.instruction)), None, None
    for a, (q, length) in env.q_table().items():
        k = (q, -length, len(words & set(WORD_RE.findall(a))))
        if best is None or k[0] > key[0] + TIE or (k[0] > key[0] - TIE and (
                k[1] > key[1] + TIE or (k[1] > key[1] - TIE and k[2] > key[2]))):
            best, key = a, k
    return best


def noisy_expert_action(env, rng, eps=DEFAULT_EPS):
    """With probability eps a plausible mistake (a uniformly chosen available action with lower Q*: a wrong
    query, a near-miss or sponsored item, the ad, a wrong option, description, buying too early, going back),
    else the expert's action. rng: random.Random or numpy Generator."""
    best = expert_action(env)
    if rng.random() < eps:
        qs = env.optimal_q()
        worse = [a for a, q in qs.items() if q < qs[best] - TIE]
        if worse:
            return worse[int(rng.random() * len(worse))]
    return best


def first_critical_mistake(env, actions, delta=DELTA):
    """First step t with Q*(s_t, a_t) - V*(s_t) < -delta when replaying `actions` from env (freshly reset with
    the episode's task and seed) on a clone; None when there is none (success, or failure by bad luck)."""
    env = env.clone()
    for t, a in enumerate(actions):
        if env.done:
            break
        if env.q_star(a) - env.optimal_value() < -delta:
            return t
        env.step(a)
    return None


def step_kind(text, actions):
    """The kind of an action in the shop's grammar (house and travel actions fall under "other")."""
    if text not in actions:
        return "invalid"
    for kind, test in (("search", lambda t: t.startswith("search[")), ("buy", lambda t: t == "click[buy now]"),
                       ("back", lambda t: t == "click[back to search]"), ("item", lambda t: t.startswith("click[p")),
                       ("page", lambda t: t in ("click[next >]", "click[< prev]")),
                       ("detour", lambda t: t in ("click[description]", "click[deal of the day]")),
                       ("option", lambda t: t.startswith("click["))):
        if test(text):
            return kind
    return "other"


def vocabulary(name="shop"):
    """Every word the world can emit (WORD_RE split of any prompt or action), sorted."""
    if name not in WORLDS:
        raise ValueError(f"unknown environment {name!r} (available: {', '.join(WORLDS)})")
    return {"shop": shop, "house": house, "travel": travel}[name].vocabulary()


def sample_texts(name="shop", n=200):
    """A deterministic sample of prompts and actions (expert, noisy-expert and random episodes on train)."""
    out, rng, i = [], random.Random(0), 0
    while len(out) < n:
        env = make_env(name, "train", task=10_000 + i, seed=i)
        obs = env.reset()
        while not env.done and len(out) < n:
            if i % 3 == 0:
                a = expert_action(env)
            elif i % 3 == 1:
                a = noisy_expert_action(env, rng, 0.5)
            else:  # random, with the occasional invalid action so that notes appear
                a = rng.choice(env.actions() + [""])
            out += [obs, a] if a else [obs]
            obs = env.step(a)[0]
        i += 1
    return out[:n]


def tokenizer_texts(name="shop"):
    """What the world's tokenizer is trained on (tokenizer.build_tokenizer): sample prompts and actions, and
    every word the world can emit at the start of a line and (twice: merges need a pair seen at least
    twice) after a space, as words mostly appear, so that most words become one token."""
    words = vocabulary(name)
    return list(sample_texts(name, 200)) + words + [" " + w for w in words] * 2


# -----------------------------------------------------------------------------
# command line: play, demo

def main(argv):
    ap = argparse.ArgumentParser(description="play a task at the keyboard, or watch the expert (--demo)")
    ap.add_argument("--env", default="shop", choices=list(WORLDS))
    ap.add_argument("--split", default="train", choices=["train", "valid", "test"])
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo", action="store_true", help="print an expert episode with Q* beside every action")
    args = ap.parse_args(argv)
    try:
        env = make_env(args.env, split=args.split, task=args.task, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"envs.py: {e}")
    print(env.reset())
    while not env.done:
        if args.demo:
            for a, q in env.optimal_q().items():
                print(f"    Q*={q:.3f}  {a}")
            a = expert_action(env)
            print(f"> {a}")
        else:
            try:
                a = input("> ")
            except EOFError:
                print()
                break
        obs, r, done, info = env.step(a)
        print("\n" + obs)
        if done:
            print(f"reward {r:.3f} | success {info['success']} | truncated {info['truncated']}")


if __name__ == "__main__":
    main(sys.argv[1:])
