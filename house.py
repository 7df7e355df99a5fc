"""
house.py: an ALFWorld-like household, one room (a kitchen or a living room) with 7 receptacles and the six
ALFWorld task types: put an object somewhere, put two of them somewhere, put a clean / hot / cool one somewhere,
examine one under the lamp. ALFWorld's commands (`go to fridge 1`, `open fridge 1`, `take apple 1 from fridge 1`,
`heat apple 1 with microwave 1`, `put apple 1 in countertop 1`, `use desklamp 1`); the prompt lists the commands
that make sense where the agent stands; anything else: "nothing happens.". Randomness: where each wanted object
is, drawn when a plausible receptacle is first looked into (the agent knows the plausible ones from common sense:
apples are mostly in the fridge), and appliances that fail now and then. Irreversible: `put X in garbagecan 1`
destroys X, heating a hot (cooling a cool) one ruins it. Binary reward, 1 when the goal holds. Unseen test tasks
(odd ids) use room layouts that never occur in train/valid.

    python envs.py --env=house --task=3          # play a task at the keyboard (--split, --seed)
"""
import functools
import random

from worlds import Task, WORD_RE, check_task_id

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
# the words of this world (for the tokenizer)

def vocabulary():
    """Every word the house world can emit (WORD_RE split of any prompt or action), sorted."""
    fixed = ["your task is to: put some a two clean hot cool in on examine the with desklamp 1 2 .",
             "note: " + HouseTask.invalid_note, HouseTask.timeout_note, "you pick up the open close again ruined",
             "heat cool clean using does not work this time . it is gone turn on and examine under flickers goes dark",
             "you are in the middle of a room at it , you see nothing closed hold : ( ) remember searched ;",
             "go to take from put use steps left actions | episode over"]
    words = {w for s in fixed + KITCHEN + LIVING + KITCHEN_OBJECTS + LIVING_OBJECTS for w in WORD_RE.findall(s)}
    return sorted(words | {str(i) for i in range(41)})
