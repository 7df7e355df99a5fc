"""
worlds.py: what a world is, and two of them: an ALFWorld-like household ("house") and the travel booking of
the article ("travel"). The third world, the WebShop-like shop, is in shop.py; envs.py turns any world's Task
into an environment with an exact oracle (envs.make_env). This file imports nothing of ours.

A world is a Task fixed by (split, task_id) and shared by every env and clone of it. It is three functions of
a small hashable `core` (the page and what the agent has done; the env adds the steps left and the last note):
    _moves(core) -> {action: [(prob, next_core, reward, note, done)]}   in display order (cached by moves())
    page(core)   -> the lines of the prompt that describe the page
    irreversible(core, action) -> whether taking it can lose value for good
plus `start` (the first core), `instruction`, and the notes shown after an invalid action and at the end of
the step budget. envs.py writes the dynamics, the prompt, the oracle and the soft solver once, for every world.

house: one room (a kitchen or a living room) with 7 receptacles and the six ALFWorld task types: put an object
    somewhere, put two of them somewhere, put a clean / hot / cool one somewhere, examine one under the lamp.
    ALFWorld's commands (`go to fridge 1`, `open fridge 1`, `take apple 1 from fridge 1`, `heat apple 1 with
    microwave 1`, `put apple 1 in countertop 1`, `use desklamp 1`); the prompt lists the commands that make
    sense where the agent stands; anything else: "nothing happens.". Randomness: where each wanted object
    is, drawn when a plausible receptacle is first looked into (the agent knows the plausible ones from
    common sense: apples are mostly in the fridge), and appliances that fail now and then. Irreversible:
    `put X in garbagecan 1` destroys X, heating a hot (cooling a cool) one ruins it. Binary reward, 1 when the goal holds.
    Unseen test tasks (odd ids) use room layouts that never occur in train/valid.
travel: "book a direct flight to tokyo and a hotel near shibuya with a pool, total at most 1200 dollars".
    Search flights, book one (irreversible; a flight with 2 seats left may sell out as you book), search
    hotels (the price list is drawn at every search: normal, a price surge, or the cheapest good hotel sold
    out), book one. The expensive "top pick" flight leaves too little for a good hotel: the article's first
    critical mistake. WebShop-style partial credit: the fraction of the five requirements met. Unseen test
    tasks (odd ids) ask for an (area, hotel feature) pair that never occurs in train/valid.

    python envs.py --env=house --task=3          # play a task at the keyboard (--split, --seed)
    python envs.py --env=travel --demo           # an expert episode with Q* beside every available action
    python bench.py --only=envs                  # steps/s, oracle time, V*(s0), expert scores of every world
"""
import functools
import math
import random
import re

# -----------------------------------------------------------------------------
# what every world shares

N_TASKS = {"valid": 200, "test": 500}  # fixed split sizes; "train" takes any task id >= 0
TIE = 1e-9  # values closer than this are equal (the oracle's tie-breaks)
WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")  # how vocabulary() splits text into words
NOTE_INVALID = "invalid action, nothing happened"  # the shop's and travel's note after an invalid action


PER_PAGE = 4  # results per page, in every world whose result lists page (the shop's, travel's hotels)


def on_page(lst, pg):
    """The items on page pg (from 0) of a result list, and the page's "(page i of n)" label."""
    return lst[pg * PER_PAGE:(pg + 1) * PER_PAGE], f"(page {pg + 1} of {-(-len(lst) // PER_PAGE)})"


def page_turns(lst, pg, core_at):
    """The next / prev moves of page pg of a result list; core_at(page) is the core that shows that page."""
    m = {}
    if (pg + 1) * PER_PAGE < len(lst):
        m["click[next >]"] = [(1.0, core_at(pg + 1), 0.0, "", False)]
    if pg > 0:
        m["click[< prev]"] = [(1.0, core_at(pg - 1), 0.0, "", False)]
    return m


def check_task_id(split, task_id):
    """Refuses a task id outside its split; returns whether the task is in the unseen half (odd test ids)."""
    if split not in ("train", "valid", "test") or task_id < 0 or task_id >= N_TASKS.get(split, math.inf):
        raise ValueError(f"no task {task_id} in split {split!r} (sizes: {N_TASKS}, train: any id >= 0)")
    return split == "test" and task_id % 2 == 1


class Task:
    """The base of every world's task: caches of the moves of each core, of the oracle's values (memo, filled
    by envs.solve) and of lower bounds on the steps still needed. A subclass sets the fields named in the
    module docstring and calls self.init_caches()."""
    invalid_note = timeout_note = ""
    end_line = "episode over"  # the page line of a finished episode

    def init_caches(self):
        self.cache, self.memo, self.bounds = {}, {}, {}

    @property
    def head(self):  # the prompt's first line
        return self.instruction

    def moves(self, core):
        m = self.cache.get(core)
        if m is None:
            m = self.cache[core] = self._moves(core)
        return m

    def bound(self, core):
        b = self.bounds.get(core)
        if b is None:
            b = self.bounds[core] = self.lower_bound(core)
        return b

    def lower_bound(self, core):
        return 0  # steps needed to score anything at all (a world may prune hopeless states with it)


# -----------------------------------------------------------------------------
# house: an ALFWorld-like room

KITCHEN = ["fridge 1", "microwave 1", "sinkbasin 1", "garbagecan 1",  # every kitchen has these four
           "countertop 1", "countertop 2", "cabinet 1", "cabinet 2", "drawer 1", "diningtable 1", "shelf 1"]
LIVING = ["garbagecan 1", "desk 1",  # every living room has these two (the desklamp stands on the desk)
          "sidetable 1", "shelf 1", "shelf 2", "drawer 1", "drawer 2", "dresser 1", "sofa 1", "bed 1", "coffeetable 1"]
OPENABLE = ("fridge", "microwave", "cabinet", "drawer")
APPLIANCE = {"microwave 1": "heat", "fridge 1": "cool", "sinkbasin 1": "clean"}
P_FAIL = {"heat": 0.25, "cool": 0.2, "clean": 0.0, "use": 0.2}  # appliances that sometimes fail
PRIOR = (0.5, 0.3, 0.2)  # where a wanted object is: its three most plausible receptacles present in the room
# where each object is usually found, most plausible first (the agent is meant to learn this common sense)
PLACES = {
    "apple": "fridge 1, countertop 1, diningtable 1, countertop 2", "tomato": "fridge 1, countertop 2, diningtable 1",
    "potato": "fridge 1, diningtable 1, countertop 1, cabinet 1", "egg": "fridge 1, countertop 1, diningtable 1",
    "lettuce": "fridge 1, countertop 2, diningtable 1, countertop 1", "mug": "cabinet 1, countertop 1, shelf 1, sinkbasin 1",
    "cup": "cabinet 2, shelf 1, countertop 2, sinkbasin 1", "plate": "cabinet 1, diningtable 1, drawer 1, cabinet 2",
    "bowl": "cabinet 2, countertop 1, shelf 1, diningtable 1",
    "book": "shelf 1, desk 1, bed 1, coffeetable 1", "cd": "drawer 1, shelf 2, desk 1, sidetable 1",
    "pen": "desk 1, drawer 2, sidetable 1, dresser 1", "keychain": "dresser 1, sidetable 1, drawer 1, sofa 1",
    "remotecontrol": "coffeetable 1, sofa 1, sidetable 1, dresser 1", "cellphone": "bed 1, desk 1, sidetable 1, sofa 1",
    "alarmclock": "sidetable 1, dresser 1, desk 1, shelf 2", "vase": "shelf 2, coffeetable 1, dresser 1, shelf 1",
}
PLACES = {o: tuple(s.split(", ")) for o, s in PLACES.items()}
KITCHEN_OBJECTS = ["apple", "tomato", "potato", "egg", "lettuce", "mug", "cup", "plate", "bowl"]
LIVING_OBJECTS = ["book", "cd", "pen", "keychain", "remotecontrol", "cellphone", "alarmclock", "vase"]
KINDS = ["put", "two", "clean", "heat", "cool", "look"]
FOR_KIND = {"clean": KITCHEN_OBJECTS, "heat": ["apple", "tomato", "potato", "egg", "mug", "cup"],
            "cool": ["apple", "tomato", "potato", "lettuce", "mug", "cup", "bowl"], "look": LIVING_OBJECTS}
COND = {"clean": "clean", "heat": "hot", "cool": "cool"}
HOUSE_MAX_STEPS = 12  # the best paths take 4-10 steps, 5-9 on average (two objects and heating the longest)
UNK, HELD, GONE, START = -1, -2, -3, -4  # where an object is (else a receptacle index); START: where the agent begins


def _layouts():
    """8 layouts per room (7 receptacles in a shuffled order); layouts 6 and 7 are kept for unseen test tasks."""
    rng, out = random.Random("house/layouts"), {}
    for room, pool, fixed in (("kitchen", KITCHEN, 4), ("living", LIVING, 2)):
        seen = set()
        while len(seen) < 8:
            recs = pool[:fixed] + rng.sample(pool[fixed:], 7 - fixed)
            if frozenset(recs) not in seen:
                seen.add(frozenset(recs))
                rng.shuffle(recs)
                out.setdefault(room, []).append(tuple(recs))
    return out


LAYOUTS = _layouts()


def _prep(rec):
    return "in" if rec.split()[0] in OPENABLE + ("sinkbasin", "garbagecan") else "on"


class HouseTask(Task):
    """core = (loc, is_open, searched, objs, decoy): loc a receptacle index (or START), is_open whether the
    receptacle at loc is open (doors swing shut when you walk away: one bit instead of one per door),
    searched a bitmask of plausible receptacles already looked into while a wanted object is still unknown,
    objs ((where, condition), ...) of the wanted objects, decoy the look-alike's where."""
    invalid_note, timeout_note = "nothing happens.", "out of steps, the task is not done."

    def __init__(self, split, task_id):
        rng = random.Random(f"house/{split}/{task_id}")
        self.split, self.task_id, self.unseen = split, task_id, check_task_id(split, task_id)
        self.kind = kind = rng.choice(KINDS)
        room = "living" if kind == "look" else "kitchen" if kind in COND else rng.choice(["kitchen", "living"])
        pool = LIVING_OBJECTS if room == "living" else KITCHEN_OBJECTS
        while True:
            self.recs = recs = rng.choice(LAYOUTS[room][6:] if self.unseen else LAYOUTS[room][:6])
            self.obj = rng.choice(FOR_KIND.get(kind, pool))
            spots = [r for r in recs if r not in APPLIANCE and r != "garbagecan 1" and r not in PLACES[self.obj][:1]]
            self.target = rng.choice(spots) if kind != "look" else None
            cands = [r for r in PLACES[self.obj] if r in recs and r != self.target][:3]
            if len(cands) >= 2:  # at least two places to look: the search is a gamble
                break
        self.cand = {recs.index(r): w / sum(PRIOR[:len(cands)]) for r, w in zip(cands, PRIOR)}
        n = 2 if kind == "two" else rng.choice([1, 2])  # with one only, binning it is fatal
        self.names = [f"{self.obj} {i + 1}" for i in range(n)]
        self.decoy_name = rng.choice([o for o in pool if o != self.obj]) + " 1"
        decoy_at = rng.choice([i for i, r in enumerate(recs) if r not in ("garbagecan 1", self.target)])
        self.lamp = recs.index("desk 1") if "desk 1" in recs else None
        self.gone_at = recs.index("garbagecan 1")
        self.t = recs.index(self.target) if self.target else None
        self.go, self.closed = [f"go to {r}" for r in recs], [r.split()[0] in OPENABLE for r in recs]
        self.app = next((recs.index(r) for r, v in APPLIANCE.items() if COND.get(v) == COND.get(kind)), None)
        if kind == "look":
            self.instruction = f"your task is to: examine the {self.obj} with the desklamp."
        else:
            what = {"put": "some ", "two": "two "}.get(kind, f"a {COND.get(kind, '')} ")
            self.instruction = f"your task is to: put {what}{self.obj} {_prep(self.target)} {self.target}."
        self.start = (START, False, 0, ((UNK, ""),) * n, decoy_at)
        self.init_caches()

    def visible(self, loc, is_open):
        return loc >= 0 and (is_open or not self.closed[loc])

    def _look(self, loc, searched, objs):
        """Looking into receptacle loc: [(prob, searched, objs)], drawing where the unknown wanted objects are."""
        if loc not in self.cand or searched >> loc & 1 or all(w != UNK for w, _ in objs):
            return [(1.0, searched, objs)]
        rest = [w for r, w in self.cand.items() if not searched >> r & 1]
        p = 1.0 if len(rest) == 1 else self.cand[loc] / sum(rest)  # P(here | not where we looked before)
        outs = [(1.0, searched | 1 << loc, ())]
        for where, cond in objs:  # independent draws, one per unknown object
            if where != UNK:
                outs = [(q, s, o + ((where, cond),)) for q, s, o in outs]
            else:
                outs = [(q * x, s, o + ((w, cond),)) for q, s, o in outs for x, w in ((p, loc), (1 - p, UNK)) if x > 0]
        return [(q, s if any(w == UNK for w, _ in o) else 0, o) for q, s, o in outs]  # 0: nothing left to find

    def done_after(self, objs):
        at = [c for w, c in objs if w == self.t]
        if self.kind == "two":
            return len(at) == 2
        return any(c == COND[self.kind] for c in at) if self.kind in COND else len(at) > 0

    def _moves(self, core):
        loc, is_open, searched, objs, decoy = core
        recs, m = self.recs, {}
        held = next((i for i, (w, _) in enumerate(objs) if w == HELD), "decoy" if decoy == HELD else None)
        name = self.decoy_name if held == "decoy" else self.names[held] if held is not None else None
        if loc >= 0:
            here = recs[loc]
            if self.visible(loc, is_open) and held is None:
                for i, (w, _) in enumerate(objs):
                    if w == loc:
                        o2 = objs[:i] + ((HELD, objs[i][1]),) + objs[i + 1:]
                        m[f"take {self.names[i]} from {here}"] = [(1.0, (loc, is_open, searched, o2, decoy), 0.0,
                                                                  f"you pick up the {self.names[i]}.", False)]
                if decoy == loc:
                    m[f"take {self.decoy_name} from {here}"] = [(1.0, (loc, is_open, searched, objs, HELD), 0.0,
                                                                 f"you pick up the {self.decoy_name}.", False)]
            if here.split()[0] in OPENABLE and not is_open:
                m[f"open {here}"] = [(p, (loc, True, s, o, decoy), 0.0, f"you open the {here}.", False)
                                     for p, s, o in self._look(loc, searched, objs)]
            elif here.split()[0] in OPENABLE:
                m[f"close {here}"] = [(1.0, (loc, False, searched, objs, decoy), 0.0, f"you close the {here}.", False)]
            if held is not None and self.visible(loc, is_open):
                dest = GONE if loc == self.gone_at else loc
                if held == "decoy":
                    outs = [(1.0, (loc, is_open, searched, objs, dest), 0.0, "", False)]
                else:
                    o2 = objs[:held] + ((dest, objs[held][1]),) + objs[held + 1:]
                    win = self.kind != "look" and self.done_after(o2)
                    outs = [(1.0, (loc, is_open, searched, o2, decoy), float(win), "", win)]
                note = f"you put the {name} {_prep(here)} the {here}." + (" it is gone." if dest == GONE else "")
                m[f"put {name} {_prep(here)} {here}"] = [o[:3] + (note,) + o[4:] for o in outs]
            verb = APPLIANCE.get(here)
            if held is not None and verb:
                cond = "" if held == "decoy" else objs[held][1]
                # heating a hot object burns it and cooling a cool one freezes it: ruined for good
                ruined = cond == "ruined" or (verb != "clean" and cond == COND[verb])
                cond2 = "ruined" if ruined else COND[verb]
                o2 = objs if held == "decoy" else objs[:held] + ((HELD, cond2),) + objs[held + 1:]
                said = f"you {verb} the {name} again. it is ruined." if ruined else f"you {verb} the {name} using the {here}."
                ok = (1.0 - P_FAIL[verb], (loc, is_open, searched, o2, decoy), 0.0, said, False)
                fail = (P_FAIL[verb], core, 0.0, f"the {here} does not work this time.", False)
                m[f"{verb} {name} with {here}"] = [ok] + ([fail] if fail[0] > 0 else [])
            if loc == self.lamp:
                win = self.kind == "look" and held not in (None, "decoy")
                m["use desklamp 1"] = [(1 - P_FAIL["use"], core, float(win), "you turn on the desklamp 1." + (
                    f" you examine the {name} under it." if win else ""), win),
                    (P_FAIL["use"], core, 0.0, "the desklamp 1 flickers and goes dark.", False)]
        for j, go in enumerate(self.go):
            if j != loc:
                look = [(1.0, searched, objs)] if self.closed[j] else self._look(j, searched, objs)
                m[go] = [(p, (j, False, s, o, decoy), 0.0, "", False) for p, s, o in look]
        return m

    def lower_bound(self, core):
        """Fewest steps that could still reach the goal, ignoring bad luck (loose but never too high): states
        with fewer steps left are worth 0 without a search, which keeps the oracle fast."""
        loc, is_open, searched, objs, decoy = core
        here_open, closed = self.visible(loc, is_open), self.closed

        def get(w):  # steps to have object w in hand: (go there,) (open it,) take it
            if w == HELD or w == loc:
                return 0 if w == HELD else 2 - here_open
            return min((2 - here_open if c == loc else 2 + closed[c]) for c in self.cand if not searched >> c & 1) \
                if w == UNK else 2 + closed[w]

        if self.kind == "look":  # take it, go to the lamp unless it lies there, use the lamp
            costs = [get(w) + 1 + (loc != self.lamp and w in (HELD, loc)) for w, _ in objs if w != GONE]
        else:
            want, app, t = COND.get(self.kind), self.app, self.t
            deliver = 2 + closed[t]  # go to the target, (open it,) put; less when standing there already
            discount = (loc == t) * (1 + (closed[t] and here_open))
            need = [(w, c) for w, c in objs if w != t or (want and c != want)]
            if self.kind == "two":
                costs = [] if any(w == GONE for w, _ in need) else [sum(get(w) + deliver for w, _ in need) - discount]
            else:  # the best one: get it, (go to the appliance and) transform it if needed, deliver it
                costs = [get(w) + (want is not None and c != want) * (1 + (app not in (loc, w))) + deliver - discount
                         for w, c in need if w != GONE and not (want and c == "ruined")]
        return min(costs, default=99) + (decoy == HELD)  # the look-alike in hand must be put down first

    def irreversible(self, core, text):
        outs = self.moves(core).get(text)
        if not outs:
            return False
        lost = lambda c: sum(w == GONE or k == "ruined" for w, k in c[3]) + (c[4] == GONE)  # binned or ruined
        return any(c is not None and lost(c) > lost(core) for _, c, _, _, _ in outs)

    def page(self, core):
        loc, is_open, searched, objs, decoy = core
        recs, lines = self.recs, []
        show = lambda n, c: n + (f" ({c})" if c else "")
        if loc == START:
            lines.append("you are in the middle of a room.")
        elif self.visible(loc, is_open):
            here = [show(self.names[i], c) for i, (w, c) in enumerate(objs) if w == loc]
            here += [self.decoy_name] if decoy == loc else []
            lines.append(f"you are at {recs[loc]}. {_prep(recs[loc])} it, you see {', '.join(here) or 'nothing'}.")
        else:
            lines.append(f"you are at {recs[loc]}. it is closed.")
        held = [show(self.names[i], c) for i, (w, c) in enumerate(objs) if w == HELD]
        lines.append("you hold: " + (held[0] if held else self.decoy_name if decoy == HELD else "nothing") + ".")
        in_sight = lambda w: w == loc and self.visible(loc, is_open)
        mem = [show(self.names[i], c) + (" is gone" if w == GONE else f" {_prep(recs[w])} {recs[w]}")
               for i, (w, c) in enumerate(objs) if w == GONE or (w >= 0 and not in_sight(w))]
        if searched:
            mem.append("searched: " + ", ".join(r for j, r in enumerate(recs) if searched >> j & 1))
        if mem:
            lines.append("you remember: " + "; ".join(mem) + ".")
        return lines


get_house_task = functools.lru_cache(maxsize=64)(HouseTask)  # (split, task_id) -> the task, built once


# -----------------------------------------------------------------------------
# travel: the article's flight + hotel booking under one budget

CITIES = {"tokyo": ("shibuya", "shinjuku", "ginza", "asakusa"), "osaka": ("namba", "umeda", "tennoji", "kita"),
          "seoul": ("gangnam", "myeongdong", "hongdae", "itaewon"), "paris": ("marais", "montmartre", "bastille", "louvre"),
          "london": ("soho", "camden", "kensington", "greenwich"), "rome": ("trastevere", "monti", "prati", "testaccio")}
FEATURES = ("breakfast", "pool", "gym", "spa")
NEEDS = ("direct", "morning")  # the flight requirement; every flight is morning/evening and direct/1 stop
AIRLINES = ("sky air", "blue jet", "east wind", "sun air", "star jet")
HOTEL_NAMES = ("sakura", "park", "grand", "river", "garden", "central", "royal", "harbor")
DRAWS = (0.5, 0.3, 0.2)  # hotel prices at each search: as listed, a 30% surge, the cheapest good hotel sold out
P_SOLD = 0.35            # the flight with "2 seats left" sells out as you book it
TRAVEL_MAX_STEPS = 10  # the best path takes 4 steps (6-7 after an unlucky hotel search)
HELD_OUT_TRAVEL = frozenset((a, random.Random(f"travel/held-out/{a}").choice(FEATURES))
                            for areas in CITIES.values() for a in areas)  # one hotel feature per area
R10 = lambda x: int(round(x / 10.0)) * 10  # whole dollars, multiples of 10 (a small vocabulary of numbers)


class TravelTask(Task):
    """core = (page, args, flight, hotel, sold): page "home" | "flights" (args: query) | "hotels" (args: query,
    price draw, page number); flight / hotel: None or (id, price paid); sold: the 2-seats flight sold out."""
    invalid_note, timeout_note = NOTE_INVALID, "out of steps, the trip is not booked"

    def __init__(self, split, task_id):
        rng = random.Random(f"travel/{split}/{task_id}")
        self.split, self.task_id, self.unseen = split, task_id, check_task_id(split, task_id)
        city = self.city = rng.choice(sorted(CITIES))
        while True:
            area, feat = rng.choice(CITIES[city]), rng.choice(FEATURES)
            if ((area, feat) in HELD_OUT_TRAVEL) == self.unseen:
                break
        self.area, self.feat, self.need = area, feat, rng.choice(NEEDS)
        feats = lambda a, bad=(): [f for f in FEATURES if f not in bad and (self.unseen or (a, f) not in HELD_OUT_TRAVEL)]
        # prices: the safe flight plus the cheapest good hotel fit the budget (with 0-80 to spare), the "top pick"
        # costs 150-240 more than the safe flight, which never leaves enough for a good hotel
        g1, slack, safe = rng.randrange(25, 46) * 10, rng.randrange(0, 9) * 10, rng.randrange(35, 71) * 10
        self.budget = safe + g1 + slack
        other_city = rng.choice([c for c in sorted(CITIES) if c != city])
        ids = [f"f{i}" for i in rng.sample(range(1, 10), 9)]
        ok = lambda good: {"direct": ("morning" if rng.random() < 0.5 else "evening", "direct" if good else "1 stop"),
                           "morning": ("morning" if good else "evening", "direct" if rng.random() < 0.5 else "1 stop")}[self.need]
        specs = [(safe + rng.randrange(15, 25) * 10, True), (safe - rng.randrange(5, 13) * 10, True), (safe, True),
                 (safe - rng.randrange(8, 20) * 10, False), (safe + rng.randrange(-5, 6) * 10, False)]
        # flight: (city, time, stops, price, airline); trap first ("top pick"), the 2-seats one second
        self.flights = {ids[i]: (city,) + ok(good) + (price, rng.choice(AIRLINES)) for i, (price, good) in enumerate(specs)}
        for fid in ids[5:]:
            self.flights[fid] = (other_city, rng.choice(["morning", "evening"]), rng.choice(["direct", "1 stop"]),
                                 rng.randrange(30, 91) * 10, rng.choice(AIRLINES))
        self.trap, self.risky, self.safe = ids[0], ids[1], ids[2]
        near, third = rng.sample([a for a in CITIES[city] if a != area], 2)
        hids, names = [f"h{i}" for i in rng.sample(range(1, 10), 9)], rng.sample(HOTEL_NAMES * 2, 9)
        hs = [(area, feat, g1), (area, feat, g1 + rng.randrange(6, 16) * 10)]  # the two good hotels, cheapest first
        hs += [(area, rng.choice(feats(area, (feat,))), g1 - rng.randrange(4, 13) * 10) for _ in range(2)]
        hs += [(near, rng.choice(feats(near)), rng.randrange(15, 46) * 10) for _ in range(3)]
        hs += [(third, rng.choice(feats(third)), rng.randrange(15, 46) * 10) for _ in range(2)]
        self.hotels = {h: (f"{n} hotel", a, f, p) for h, n, (a, f, p) in zip(hids, names, hs)}
        self.good1 = hids[0]
        self.queries = [f"flights to {city}", f"flights to {other_city}", f"hotels near {area}", f"hotels near {near}",
                        f"hotels in {city}"]
        rng.shuffle(self.queries)
        self.lists = []  # per query: the flight ids, or per price draw a tuple of (hotel id, price)
        for q in self.queries:
            if q.startswith("flights"):
                c = q.split()[-1]
                rest = [f for f in self.flights if self.flights[f][0] == c and f != self.trap]
                rng.shuffle(rest)
                self.lists.append(tuple(([self.trap] if c == city else []) + rest))
                continue
            members = [h for h in hids if q.split()[-1] in (city, self.hotels[h][1])]
            members += [hids[7]] if q.endswith(area) else []  # one hotel from another area sneaks in
            draws = []
            for k in range(len(DRAWS)):
                order = rng.sample(members, len(members))
                scale = 1.3 if k == 1 else 1.0
                draws.append(tuple((h, R10(self.hotels[h][3] * scale)) for h in order if not (k == 2 and h == self.good1)))
            self.lists.append(draws)
        with_ = {"breakfast": "with breakfast"}.get(feat, f"with a {feat}")
        self.instruction = (f"instruction: book a {self.need} flight to {city} and a hotel near {area} {with_}, "
                            f"total at most {self.budget} dollars")
        self.start = ("home", (), None, None, False)
        self.init_caches()

    def score(self, flight, hotel):
        """WebShop-style partial credit: the fraction of the five requirements the trip meets."""
        c, time_, stops, _, _ = self.flights[flight[0]]
        _, area, feat, _ = self.hotels[hotel[0]]
        reqs = [c == self.city, self.need in (time_, stops), area == self.area, feat == self.feat,
                flight[1] + hotel[1] <= self.budget]
        return sum(reqs) / len(reqs)

    def _book(self, core, kind, item):
        page, args, flight, hotel, sold = core
        flight, hotel = (item, hotel) if kind == "flight" else (flight, item)
        note = f"you booked {kind} {item[0]} for {item[1]} dollars."
        if flight and hotel:
            return (1.0, (page, args, flight, hotel, sold), self.score(flight, hotel), note + " the trip is booked.", True)
        return (1.0, ("home", (), flight, hotel, sold), 0.0, note, False)

    def _moves(self, core):
        page, args, flight, hotel, sold = core
        m, back = {}, [(1.0, ("home", (), flight, hotel, sold), 0.0, "", False)]
        if page == "home":
            for i, q in enumerate(self.queries):
                if q.startswith("flights") and not flight:
                    m[f"search[{q}]"] = [(1.0, ("flights", (i,), flight, hotel, sold), 0.0, "", False)]
                elif q.startswith("hotels") and not hotel:
                    m[f"search[{q}]"] = [(p, ("hotels", (i, k, 0), flight, hotel, sold), 0.0, "", False)
                                         for k, p in enumerate(DRAWS)]
        elif page == "flights":
            for fid in self.lists[args[0]]:
                if fid == self.risky and sold:
                    continue
                booked = self._book(core, "flight", (fid, self.flights[fid][3]))
                if fid == self.risky:  # 2 seats left: they may go while you book
                    booked = (1.0 - P_SOLD,) + booked[1:]
                    gone = (P_SOLD, (page, args, flight, hotel, True), 0.0, f"sorry, flight {fid} just sold out.", False)
                    booked = [booked, gone]
                m[f"book[{fid}]"] = booked if isinstance(booked, list) else [booked]
            m["click[back to search]"] = back
        else:
            q, k, pg = args
            lst = self.lists[q][k]
            for hid, price in on_page(lst, pg)[0]:
                m[f"book[{hid}]"] = [self._book(core, "hotel", (hid, price))]
            m.update(page_turns(lst, pg, lambda p2: (page, (q, k, p2), flight, hotel, sold)))
            m["click[back to search]"] = back
        return m

    def irreversible(self, core, text):
        return text.startswith("book[") and text in self.moves(core)

    def page(self, core):
        page, args, flight, hotel, sold = core
        lines = []
        if flight or hotel:
            paid = sum(x[1] for x in (flight, hotel) if x)
            left = f"budget left: ${self.budget - paid}" if paid <= self.budget else f"over budget by ${paid - self.budget}"
            booked = [f"{kind} {x[0]} (${x[1]})" for kind, x in (("flight", flight), ("hotel", hotel)) if x]
            lines.append(f"booked: {', '.join(booked)}. {left}.")
        if page == "home":
            lines.append("page: search")
        elif page == "flights":
            lines.append(self.queries[args[0]] + ":")
            for fid in self.lists[args[0]]:
                c, time_, stops, price, airline = self.flights[fid]
                tail = f"${price}" + (", 2 seats left" if fid == self.risky else "")
                tail = "sold out" if fid == self.risky and sold else tail
                lines.append(f"{fid} {'(top pick) ' if fid == self.trap else ''}{airline}, {time_}, {stops}, {tail}")
        else:
            q, k, pg = args
            lst = self.lists[q][k]
            items, label = on_page(lst, pg)
            lines.append(f"{self.queries[q]} {label}:")
            for hid, price in items:
                name, area, feat, _ = self.hotels[hid]
                lines.append(f"{hid} {name}, {area}, {feat}, ${price}")
        return lines


get_travel_task = functools.lru_cache(maxsize=128)(TravelTask)  # (split, task_id) -> the task, built once


# -----------------------------------------------------------------------------
# the words of each world (for the tokenizer)

def vocabulary(name):
    """Every word the house or travel world can emit (WORD_RE split of any prompt or action), sorted."""
    if name == "house":
        fixed = ["your task is to: put some a two clean hot cool in on examine the with desklamp 1 2 .",
                 "note: " + HouseTask.invalid_note, HouseTask.timeout_note, "you pick up the open close again ruined",
                 "heat cool clean using does not work this time . it is gone turn on and examine under flickers goes dark",
                 "you are in the middle of a room at it , you see nothing closed hold : ( ) remember searched ;",
                 "go to take from put use steps left actions | episode over"]
        words = {w for s in fixed + KITCHEN + LIVING + KITCHEN_OBJECTS + LIVING_OBJECTS for w in WORD_RE.findall(s)}
        return sorted(words | {str(i) for i in range(41)})
    fixed = ["instruction: book a flight to and hotel near with total at most dollars flights hotels in",
             "note: " + NOTE_INVALID,
             TravelTask.timeout_note, "sorry, just sold out . you booked for the trip is", "booked: ( $ ) budget left",
             "over by page: search of :", "(top pick) morning evening direct 1 stop 2 seats left",
             "search[ ] book[ ] click[ next > < prev back to search ] steps actions | episode over"]
    words = {w for s in fixed + list(CITIES) + list(FEATURES) + list(AIRLINES) + list(HOTEL_NAMES)
             for w in WORD_RE.findall(s)}
    words |= {a for areas in CITIES.values() for a in areas} | {f"{x}{i}" for x in "fh" for i in range(1, 10)}
    return sorted(words | {str(i) for i in range(41)} | {str(i) for i in range(0, 2001, 10)})
