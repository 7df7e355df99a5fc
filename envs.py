"""
envs.py: the environment every world shares (one Env, its dynamics, prompt, exact oracle and soft solver,
written once), the experts, and the WebShop-like shop world. House and travel are in worlds.py.

    env = make_env("shop", split="valid", task=3, seed=0)      # or "house", "travel"
    obs = env.reset(); obs, reward, done, info = env.step("search[leather jacket]")

The shop: a task is an instruction in WebShop's synthetic style ("find a leather waterproof jacket with color: black,
and size: large, and price lower than 60 dollars") plus a catalog of 16-24 products: two full matches,
near-misses (over the price, one attribute wrong, another type of the same category, required colour or
size missing, a sponsored near-miss) and fillers. The agent sees one page at a time, in WebShop's grammar:

    search page   search[<one of 5 suggested queries>]
    results page  click[p07] ... | click[next >] | click[< prev] | click[deal of the day] | click[back to search]
    item page     click[black] ... click[large] | click[description] | click[buy now] | click[back to search]
    description   click[< prev]            ad page   click[back to search]

Unlike WebShop, the item page has no `< prev`: going back means searching again (a fresh result list), which
keeps the state small and the prompt Markov. Any other string is a no-op that costs a step. `buy now` ends the episode with WebShop's score
    type factor (1 same type, 0.5 same category, 0 otherwise)
        * (matched attributes + matched options + price under the cap) / (attributes + options + 1),
and running out of steps (MAX_STEPS = 10, the best path takes 4-5) ends it with 0 (info["truncated"]).

Randomness is exogenous and enumerable, so an oracle can take exact expectations:
  - every search draws one of K = 4 result lists (the clean ranking, or a noisy one with items dropped and
    re-ranked, so a full match can fall off page 1),
  - every item-page load draws whether the item's one "fragile" colour is out of stock (shown on the page;
    buying an out-of-stock variant fails with reward 0).
For every world the dynamics are a pure function `transitions(task, state, action) -> [(prob, next_state,
reward, done)]` of a small hashable state (core, steps_left, note), where the task's core is the page and what
the agent has done (the shop's: page and page arguments); the prompt is a pure function of the state. The
oracle solves V*/Q* by memoised expectimax over states, with the memo stored on the shared Task object.

Splits: "train" takes any task id; "valid" (200) and "test" (500) are fixed. Test tasks with an ODD id are
"unseen": their target uses a (type, attribute) pair from HELD_OUT, which never appears in a train/valid
target, catalog or query.

    python envs.py                   # play a task at the keyboard (--env, --split, --task, --seed)
    python envs.py --demo            # an expert episode with Q* beside every available action
    python bench.py --only=envs      # env steps/s, oracle solve time, V*(s0), expert and noisy-expert scores
"""
import argparse
import collections
import functools
import math
import random
import sys

import numpy as np

import worlds
from worlds import N_TASKS, NOTE_INVALID, PER_PAGE, TIE, WORD_RE  # N_TASKS: the split sizes, for callers

# -----------------------------------------------------------------------------
# the world's words (kept small on purpose: the tokenizer is built from them)

CATEGORIES = {  # category -> (types, attributes)
    "clothing": (["jacket", "coat", "hoodie", "sweater", "shirt"],
                 ["leather", "waterproof", "wool", "cotton", "slim", "warm", "lightweight", "hooded"]),
    "shoes": (["sneaker", "boot", "sandal", "slipper", "loafer"],
              ["leather", "waterproof", "suede", "running", "lightweight", "breathable", "non-slip", "wide"]),
    "electronics": (["speaker", "charger", "keyboard", "mouse", "headset"],
                    ["wireless", "bluetooth", "portable", "waterproof", "rechargeable", "compact", "ergonomic", "quiet"]),
    "home": (["lamp", "pillow", "blanket", "mug", "rug"],
             ["soft", "ceramic", "cotton", "washable", "dimmable", "handmade", "modern", "wool"]),
}
COLORS = ["black", "white", "red", "blue", "green", "gray"]
SIZES = ["small", "medium", "large"]
SIZED = {"clothing", "shoes"}  # categories whose items come in sizes as well as colours

MAX_STEPS = 10        # visible step budget; the best path takes 4 (colour only) or 5 (colour and size) steps
LIST_PROBS = (0.4, 0.2, 0.2, 0.2)  # draw 0 is the clean ranking, draws 1-3 are noisy re-rankings
P_OOS = 0.3           # chance, at each item-page load, that the item's fragile colour is out of stock
DEFAULT_EPS = 0.3     # noisy expert: ~5 decisions per episode; measured on valid: 1 in 3 episodes succeeds
# A step is a "critical mistake" when it loses more than DELTA of optimal value. The cheapest irreversible
# error (one option, one attribute or the price wrong) scores 0.75-0.8 where 1.0 was available, so a wrong
# purchase loses >= 0.2 (measured along expert paths on valid: all of them, median 0.25); a wasted step only
# shrinks the slack that guards against stock-outs (median loss 0.04, 84% under 0.1). 0.1 separates the two.
DELTA = 0.1
BACK, BUY = "click[back to search]", "click[buy now]"
NOTE_TIMEOUT = "out of steps, nothing was bought"
AD_TEXT = "ad: deal of the day! 50% off on selected items."


def _held_out():
    # two of the eight attributes of every type are kept for the unseen half of the test set
    rng = random.Random("shop/held-out")
    return frozenset((t, a) for types, attrs in CATEGORIES.values() for t in types for a in rng.sample(attrs, 2))


HELD_OUT = _held_out()
Product = collections.namedtuple("Product", "pid type cat attrs options price fragile sponsored kind title")


def _title(attrs, t):
    return " ".join(attrs) + " " + t


class ShopTask(worlds.Task):
    """One shop task: instruction, catalog and result lists, fixed by (split, task_id). core = (page, args):
    page "search" | "results" (args: query, list draw, page number) | "item" (product id, out-of-stock draw,
    selected options) | "desc" (the item's args) | "ad"."""
    invalid_note, timeout_note, end_line = NOTE_INVALID, NOTE_TIMEOUT, "page: episode over"

    def __init__(self, split, task_id):
        rng = random.Random(f"shop/{split}/{task_id}")  # task identity; transitions use the env's own seed
        self.split, self.task_id = split, task_id
        self.unseen = worlds.check_task_id(split, task_id)
        ok = (lambda t, a: True) if self.unseen else (lambda t, a: (t, a) not in HELD_OUT)
        self.cat = cat = rng.choice(sorted(CATEGORIES))
        types, attrs = CATEGORIES[cat]
        while True:  # target: seen splits avoid held-out pairs, unseen tasks must use one
            t, a = rng.choice(types), tuple(sorted(rng.sample(attrs, 2), key=attrs.index))
            if any((t, x) in HELD_OUT for x in a) == self.unseen:
                break
        self.type, self.attrs, self.cap = t, a, rng.randrange(30, 101, 10)
        self.required = (("color", rng.choice(COLORS)),) + ((("size", rng.choice(SIZES)),) if cat in SIZED else ())
        need = dict(self.required)
        cheap = lambda: rng.randint(self.cap // 2, self.cap - 1)
        # (type, attributes, price, kind) of every product, the targets and near-misses first
        specs = [(t, a, cheap(), "match"), (t, a, cheap(), "match"), (t, a, cheap(), "missing")]
        specs += [(t, a, rng.randint(self.cap + 1, self.cap + 30), "pricey") for _ in range(rng.randint(1, 2))]
        for _ in range(3):  # one attribute wrong
            b = list(a)
            b[rng.randrange(2)] = rng.choice([x for x in attrs if x not in a and ok(t, x)])
            specs.append((t, tuple(sorted(b, key=attrs.index)), cheap(), "attr"))
        others = [u for u in types if u != t and all(ok(u, x) for x in a)]
        rng.shuffle(others)
        specs += [(u, a, cheap(), "type") for u in others[:rng.randint(1, 2)]]
        u2 = others[0] if others else rng.choice([u for u in types if u != t])  # the wrong-type query's type
        sponsor = rng.choice([i for i, s in enumerate(specs) if s[3] in ("attr", "type")])
        n_products = rng.randint(16, 24)
        while len(specs) < n_products:  # fillers: the same type, the wrong query's type, any category
            j = len(specs) % 4
            c = rng.choice(sorted(CATEGORIES)) if j == 3 else cat
            u = t if j < 2 else u2 if j == 2 else rng.choice(CATEGORIES[c][0])
            b = tuple(x for x in CATEGORIES[c][1] if ok(u, x))
            b = tuple(sorted(rng.sample(b, 2), key=CATEGORIES[c][1].index))
            if not (u == t and set(a) <= set(b)):
                specs.append((u, b, rng.randint(10, 150), "filler"))
        ids = [f"p{i:02d}" for i in rng.sample(range(1, 41), len(specs))]
        self.products = {}
        for i, (u, b, price, kind) in enumerate(specs):
            c = next(c for c in CATEGORIES if u in CATEGORIES[c][0])
            drop = rng.choice([d for d, _ in self.required]) if kind == "missing" else None
            opts = []
            for dim, pool in (("color", COLORS), ("size", SIZES)):
                if dim == "size" and c not in SIZED:
                    continue
                n = 3 if dim == "color" else rng.randint(2, 3)
                if kind == "filler" or dim not in need:
                    vals = rng.sample(pool, n)
                elif drop == dim:  # the near-miss that lacks the required option
                    vals = rng.sample([v for v in pool if v != need[dim]], min(n, len(pool) - 1))
                else:
                    vals = [need[dim]] + rng.sample([v for v in pool if v != need[dim]], n - 1)
                opts.append((dim, tuple(sorted(vals, key=pool.index))))
            colors = opts[0][1]
            fragile = need["color"] if kind == "match" else rng.choice(colors)
            self.products[ids[i]] = Product(ids[i], u, c, b, tuple(opts), price, fragile, i == sponsor, kind,
                                            _title(b, u))
        # five suggested queries (no held-out pair in seen tasks), in a random order
        self.queries = [_title(a, t), f"{rng.choice(a)} {t}", t, _title(a, u2) if others else u2, cat]
        rng.shuffle(self.queries)
        # the search engine: per query, K result lists; the sponsored item always comes first
        spons = ids[sponsor]
        self.lists = []
        for q in self.queries:
            w = set(q.split())
            rel = lambda p: 3 * (p.type in w) + sum(x in w for x in p.attrs) + 2 * (p.cat in w)
            noise = {pid: rng.random() for pid in self.products}
            ranked = sorted((p for p in self.products if p != spons), key=lambda p: (-rel(self.products[p]), noise[p]))
            n = rng.randint(2 * PER_PAGE, 3 * PER_PAGE - 1)  # 8-11 results and the sponsored one: 3 pages
            draws = [tuple([spons] + ranked[:n])]
            for _ in LIST_PROBS[1:]:
                lst = ranked[:n]
                for _ in range(2):  # swap two neighbouring pairs near the top ...
                    j = rng.randrange(6)
                    lst[j], lst[j + 1] = lst[j + 1], lst[j]
                for _ in range(rng.randint(1, 2)):  # ... drop one or two of the top results ...
                    del lst[rng.randrange(7)]
                lst += [p for p in ranked[n:] if p not in lst][:n - len(lst)]  # ... and refill from below
                draws.append(tuple([spons] + lst))
            self.lists.append(draws)
        article = "an" if a[0][0] in "aeiou" else "a"
        opts = ", and ".join(f"{d}: {v}" for d, v in self.required)
        self.instruction = f"find {article} {_title(a, t)} with {opts}, and price lower than {self.cap} dollars"
        self.start = ("search", ())
        self.init_caches()

    @property
    def head(self):
        return "instruction: " + self.instruction

    def score(self, p, sel):
        """WebShop's reward for buying product p with the selected options sel (aligned with p.options)."""
        tf = 1.0 if p.type == self.type else 0.5 if p.cat == self.cat else 0.0
        chosen = {dim: v for (dim, _), v in zip(p.options, sel)}
        hits = len(set(p.attrs) & set(self.attrs)) + sum(chosen.get(d) == v for d, v in self.required)
        return tf * (hits + (p.price < self.cap)) / (len(self.attrs) + len(self.required) + 1)

    def _moves(self, core):
        """action -> [(prob, next_core, reward, note, done)], in display order."""
        page, args = core
        m = {}
        if page == "search":
            for i, q in enumerate(self.queries):
                m[f"search[{q}]"] = [(p, ("results", (i, k, 0)), 0.0, "", False) for k, p in enumerate(LIST_PROBS)]
        elif page == "results":
            q, k, pg = args
            lst = self.lists[q][k]
            for pid in worlds.on_page(lst, pg)[0]:
                sel = (None,) * len(self.products[pid].options)
                m[f"click[{pid}]"] = [(1 - P_OOS, ("item", (pid, 0, sel)), 0.0, "", False),
                                      (P_OOS, ("item", (pid, 1, sel)), 0.0, "", False)]
            m.update(worlds.page_turns(lst, pg, lambda p2: ("results", (q, k, p2))))
            m["click[deal of the day]"] = [(1.0, ("ad", ()), 0.0, "", False)]
            m[BACK] = [(1.0, ("search", ()), 0.0, "", False)]
        elif page == "item":
            pid, stock, sel = args
            p = self.products[pid]
            for d, (_, values) in enumerate(p.options):
                for v in values:
                    m[f"click[{v}]"] = [(1.0, ("item", (pid, stock, sel[:d] + (v,) + sel[d + 1:])), 0.0, "", False)]
            m["click[description]"] = [(1.0, ("desc", args), 0.0, "", False)]
            if stock and p.fragile in sel:
                m[BUY] = [(1.0, None, 0.0, f"purchase failed, {p.fragile} {p.pid} is out of stock", True)]
            else:
                m[BUY] = [(1.0, None, self.score(p, sel), f"you bought {p.pid}", True)]
            m[BACK] = [(1.0, ("search", ()), 0.0, "", False)]
        elif page == "desc":
            m["click[< prev]"] = [(1.0, ("item", args), 0.0, "", False)]
        elif page == "ad":
            m[BACK] = [(1.0, ("search", ()), 0.0, "", False)]
        return m

    def irreversible(self, core, text):
        return text == BUY and text in self.moves(core)

    def page(self, core):
        page, args = core
        if page == "search":
            return ["page: search"]
        if page == "results":
            q, k, pg = args
            lst = self.lists[q][k]
            items, label = worlds.on_page(lst, pg)
            lines = [f"results for: {self.queries[q]} {label}"]
            for pid in items:
                p = self.products[pid]
                lines.append(f"{pid} {'(sponsored) ' if p.sponsored else ''}{p.title}, {p.price} dollars")
            return lines
        if page == "ad":
            return [AD_TEXT]
        pid, stock, sel = args  # the item page or its description
        p = self.products[pid]
        lines = [f"item {pid}: {p.title}, {p.price} dollars"]
        if page == "desc":
            return lines + [f"description: a {p.title} from our {p.cat} range, in " + ", ".join(p.options[0][1]) + "."]
        for dim, values in p.options:
            out = lambda v: " (out of stock)" if stock and v == p.fragile else ""
            lines.append(f"{dim}: " + ", ".join(v + out(v) for v in values))
        return lines + ["selected: " + (", ".join(v for v in sel if v) or "nothing")]


get_shop_task = functools.lru_cache(maxsize=128)(ShopTask)  # a fully solved task holds ~2 MB of oracle memo

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

    def log_ratio(self, st, a):
        """log pi*(a|s) / pi_ref(a|s) = (Q(s,a) - V(s)) / beta; any text that is not an action is the no-op."""
        return (self.q(st, a if a in self.pi_ref[st] else self.invalid) - self.v(st)) / self.beta

    def expect(self, st, optimal=True, memo=None):
        """(success probability, expected reward, expected sum of log pi/pi_ref) of an episode from st under
        pi* (optimal=True) or pi_ref (the last is then 0). Under pi*, beta * KL = E[reward] - V(st) exactly."""
        memo = {} if memo is None else memo
        if st not in memo:
            out = [0.0, 0.0, 0.0]
            for a, pr in self.ref_terms(st):
                lr = self.log_ratio(st, a) if optimal else 0.0
                w = pr * math.exp(lr)
                for p, s2, r, d in self.transitions_of(st, a):
                    nxt = (float(r == 1.0), 0.0, 0.0) if d else self.expect(s2, optimal, memo)
                    out[0] += w * p * nxt[0]
                    out[1] += w * p * (r + nxt[1])
                    out[2] += w * p * (lr + nxt[2])
            memo[st] = tuple(out)
        return memo[st]


WORLDS = {  # name -> (the task of (split, task_id), the step budget)
    "shop": (get_shop_task, MAX_STEPS),
    "house": (worlds.get_house_task, worlds.HOUSE_MAX_STEPS),
    "travel": (worlds.get_travel_task, worlds.TRAVEL_MAX_STEPS),
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


def vocabulary(name="shop"):
    """Every word the world can emit (WORD_RE split of any prompt or action), sorted."""
    if name not in WORLDS:
        raise ValueError(f"unknown environment {name!r} (available: {', '.join(WORLDS)})")
    if name != "shop":
        return worlds.vocabulary(name)
    fixed = ["instruction: find a an with color: size: , and price lower than dollars", "note: " + NOTE_INVALID,
             NOTE_TIMEOUT, "purchase failed, is out of stock you bought", "page: search episode over",
             "results for: (page of )", "(sponsored) ,", "item : (out of stock) selected: nothing",
             "description: a from our range, in .", AD_TEXT, "steps left: actions: |", "search[ ]",
             "click[ next > < prev deal of the day back to search description buy now ]"]
    words = {w for s in fixed for w in WORD_RE.findall(s)}
    for cat, (types, attrs) in CATEGORIES.items():
        words |= {w for s in [cat] + types + attrs for w in WORD_RE.findall(s)}
    words |= set(COLORS) | set(SIZES) | {f"p{i:02d}" for i in range(1, 41)} | {str(i) for i in range(201)}
    return sorted(words)


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
    """What the world's tokenizer is trained on (model.build_tokenizer): sample prompts and actions, and
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
