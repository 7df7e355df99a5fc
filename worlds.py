"""
worlds.py: what a world is, and what every world shares. The worlds themselves: the WebShop-like shop
(shop.py), an ALFWorld-like household (house.py) and a travel booking world (travel.py); envs.py turns
any world's Task into an environment with an exact oracle (envs.make_env). This file imports nothing of ours.

A world is a Task fixed by (split, task_id) and shared by every env and clone of it. It is three functions of
a small hashable `core` (the page and what the agent has done; the env adds the steps left and the last note):
    _moves(core) -> {action: [(prob, next_core, reward, note, done)]}   in display order (cached by moves())
    page(core)   -> the lines of the prompt that describe the page
    irreversible(core, action) -> whether taking it can lose value for good
plus `start` (the first core), `instruction`, and the notes shown after an invalid action and at the end of
the step budget. envs.py writes the dynamics, the prompt, the oracle and the soft solver once, for every world.
Each world also lists every word it can emit (vocabulary(), for the tokenizer).

    python bench.py --only=envs                  # steps/s, oracle time, V*(s0), expert scores of every world
"""
import math
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
