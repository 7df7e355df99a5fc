"""
travel.py: a travel booking world. "book a direct flight to tokyo and a hotel near shibuya with a pool, total at
most 1200 dollars". Search flights, book one (irreversible; a flight with 2 seats left may sell out as you book),
search hotels (the price list is drawn at every search: normal, a price surge, or the cheapest good hotel sold out),
book one. The expensive "top pick" flight leaves too little for a good hotel: the early, irreversible mistake.
WebShop-style partial credit: the fraction of the five requirements met. Unseen test tasks (odd ids) ask for an
(area, hotel feature) pair that never occurs in train/valid.

    python envs.py --env=travel --demo           # an expert episode with Q* beside every available action
"""
import functools
import random

from worlds import NOTE_INVALID, Task, WORD_RE, check_task_id, on_page, page_turns

# -----------------------------------------------------------------------------
# travel: a flight and a hotel booked under one budget

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
# the words of this world (for the tokenizer)

def vocabulary():
    """Every word the travel world can emit (WORD_RE split of any prompt or action), sorted."""
    fixed = ["instruction: book a flight to and hotel near with total at most dollars flights hotels in",
             "note: " + NOTE_INVALID,
             TravelTask.timeout_note, "sorry, just sold out . you booked for the trip is", "booked: ( $ ) budget left",
             "over by page: search of :", "(top pick) morning evening direct 1 stop 2 seats left",
             "search[ ] book[ ] click[ next > < prev back to search ] steps actions | episode over"]
    words = {w for s in fixed + list(CITIES) + list(FEATURES) + list(AIRLINES) + list(HOTEL_NAMES)
             for w in WORD_RE.findall(s)}
    words |= {a for areas in CITIES.values() for a in areas} | {f"{x}{i}" for x in "fh" for i in range(1, 10)}
    return sorted(words | {str(i) for i in range(41)} | {str(i) for i in range(0, 2001, 10)})
