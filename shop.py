"""
shop.py: the WebShop-like shop world, as a Task that envs.py turns into an environment with an exact oracle
(envs.make_env("shop", ...)). It imports only worlds.py.

A task is an instruction in WebShop's synthetic style ("find a leather waterproof jacket with color: black,
and size: large, and price lower than 60 dollars") plus a catalog of 16-24 products: two full matches,
near-misses (over the price, one attribute wrong, another type of the same category, required colour or
size missing, a sponsored near-miss) and fillers. The agent sees one page at a time, in WebShop's grammar:

    search page   search[<one of 5 suggested queries>]
    results page  click[p07] ... | click[next >] | click[< prev] | click[deal of the day] | click[back to search]
    item page     click[black] ... click[large] | click[description] | click[buy now] | click[back to search]
    description   click[< prev]            ad page   click[back to search]

Unlike WebShop, the item page has no `< prev`: going back means searching again (a fresh result list), which
keeps the state small and the prompt Markov. Any other string is a no-op that costs a step. `buy now` ends the
episode with WebShop's score
    type factor (1 same type, 0.5 same category, 0 otherwise)
        * (matched attributes + matched options + price under the cap) / (attributes + options + 1),
and running out of steps (MAX_STEPS = 10, the best path takes 4-5) ends it with 0 (info["truncated"]).

Randomness is exogenous and enumerable, so an oracle can take exact expectations:
  - every search draws one of K = 4 result lists (the clean ranking, or a noisy one with items dropped and
    re-ranked, so a full match can fall off page 1),
  - every item-page load draws whether the item's one "fragile" colour is out of stock (shown on the page;
    buying an out-of-stock variant fails with reward 0).
Test tasks with an ODD id are "unseen": their target uses a (type, attribute) pair from HELD_OUT, which never
appears in a train/valid target, catalog or query.

    python envs.py --demo            # an expert episode with Q* beside every available action
"""
import collections
import copy
import functools
import itertools
import random

import worlds
from worlds import NOTE_INVALID, PER_PAGE, WORD_RE

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


def twins(task):
    """The tasks that no prompt tells apart from `task` until an item page is opened: the hidden payloads
    (options, fragile colour, kind) of its three look-alike products, the two full matches and the near-miss that
    lacks a required option (the same title, a price under the cap), permuted among them in all six orders, the
    first being the task itself. Every search and results page of a twin renders as the task's does."""
    group = [pid for pid, p in task.products.items() if p.kind in ("match", "missing")]
    out = []
    for order in itertools.permutations(group):
        twin = copy.copy(task)
        twin.products = dict(task.products)
        for pid, src in zip(group, order):
            p = task.products[src]
            twin.products[pid] = task.products[pid]._replace(options=p.options, fragile=p.fragile, kind=p.kind)
        twin.init_caches()  # the oracle's memo belongs to one catalog
        out.append(twin)
    return out


def target_title(task):
    """The title of the product the instruction asks for (the look-alikes carry it too)."""
    return _title(task.attrs, task.type)


def visible_class(task, pid):
    """What a results page shows of a product, against the instruction: "sponsored", or its title against the
    target's ("other title"), or the target's title with a price "under the cap" or "over the cap"."""
    p = task.products[pid]
    if p.sponsored:
        return "sponsored"
    if p.title != target_title(task):
        return "other title"
    return "under the cap" if p.price < task.cap else "over the cap"


get_shop_task = functools.lru_cache(maxsize=128)(ShopTask)  # a fully solved task holds ~2 MB of oracle memo


def vocabulary():
    """Every word the shop can emit (WORD_RE split of any prompt or action), sorted."""
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
