"""
monitor.py: an agent that halts and asks for help. While the PPO agent acts, a running score of its step scores
(pa.monitor_scores: the running sum, the last step, or a drop) is checked before each action; below a threshold
the agent stops and the scripted expert finishes the episode: one request for help. How good is a scorer at
this? Success against requests for help per 100 episodes, on the test split, with every choice (the running
score and the threshold for each budget) made on the validation split first.

Evaluated offline and exactly: the greedy episodes are rolled out once with a copy of every state; a monitor
that fires at step t leaves the agent's actions before t unchanged (greedy), so its episode is those t steps
followed by the expert from the saved state t. agents.rollout(..., monitor=search.halting_monitor(...)) runs the
same monitor online. A scorer that needs the action executed (value_td) can only hand over one step later.

    python monitor.py --ckpt out/ppo_avg.pt        # monitor.json and monitor.md beside the checkpoint
    python search.py --ckpt out/ppo_avg.pt --show 3 --monitor   # where PA's monitor stops, next to the first mistake
"""
import os
import random
import sys

import numpy as np

import agents
import pa
import report
import search as S

SCORERS = ("pa", "logprob", "value_td", "random", "oracle")
BUDGETS = (5, 10, 20, 40)  # requests for help per 100 episodes
HEADLINE = 20


class Episodes:
    """Greedy PPO episodes of one split with every state kept, each scorer's step scores, and the expert's
    outcome from any step (memoised: each (episode, step) is played once)."""

    def __init__(self, run_, split, n, rng):
        self.eps = run_.episodes(run_.ppo, split, list(range(n)), [0], greedy=True, keep_states=True, read=False)
        self.scores = {sel: [S.step_scores(e, sel, run_.ppo.beta, rng) for e in self.eps] for sel in SCORERS}
        self.mistake = [report.attribution_steps(e) for e in self.eps]
        self._expert, self._running = {}, {}

    def expert_success(self, i, t):
        if (i, t) not in self._expert:
            env = self.eps[i].steps[t].env.clone()
            self._expert[(i, t)] = agents.expert_finish(env)[0] == 1.0
        return self._expert[(i, t)]

    def running(self, sel, how):
        """Each episode's running scores, plus a fixed pseudo-random jitter below 1e-9 that breaks ties: the
        oracle's A* takes few distinct values, and without it a threshold could spend a budget only in jumps."""
        if (sel, how) not in self._running:
            jitter = np.random.default_rng(len(self.eps))
            self._running[(sel, how)] = [[x + 1e-9 * jitter.random() for x in pa.monitor_scores(sc, how)]
                                         for sc in self.scores[sel]]
        return self._running[(sel, how)]

    def handovers(self, sel, how, threshold):
        """The step at which each episode hands over, or None."""
        late = not S.SELECTORS[sel].before_acting  # it sees a step's score only once the step is done
        out = []
        for e, ms in zip(self.eps, self.running(sel, how)):
            t = pa.first_below(ms, threshold)
            out.append(None if t is None or t + late >= len(e.steps) else t + late)
        return out

    def outcome(self, hand):
        """Success, requests per 100 episodes, and of the handovers: before the first critical mistake (the
        oracle's), and needless (the episode would have succeeded on its own)."""
        succ = [self.expert_success(i, h) if h is not None else e.success for i, (e, h) in enumerate(zip(self.eps, hand))]
        handed = [i for i, h in enumerate(hand) if h is not None]
        return dict(success=float(np.mean(succ)), requests=100 * len(handed) / len(self.eps),
                    before_mistake=sum(self.mistake[i] is not None and hand[i] <= self.mistake[i] for i in handed),
                    needless=sum(self.eps[i].success for i in handed), handovers=len(handed))

    def thresholds(self, sel, how):
        """Every threshold that changes some handover: just above each running score."""
        xs = sorted({x for ms in self.running(sel, how) for x in ms})
        return [-np.inf] + [float(np.nextafter(x, np.inf)) for x in xs]


def choose(V, sel, budgets):
    """On validation, for each budget: the running score and threshold with the best success among those with
    at most `budget` requests per 100 episodes (ties: fewer requests). Returns {budget: (how, threshold)}."""
    tried = [(V.outcome(V.handovers(sel, how, th)), how, th) for how in pa.MONITORS for th in V.thresholds(sel, how)]
    out = {}
    for b in budgets:
        o, how, th = max((x for x in tried if x[0]["requests"] <= b), key=lambda x: (x[0]["success"], -x[0]["requests"]))
        out[b] = (how, th)
    return out


def check(ppo_path, out_dir=None, device="auto", batch_size=256, n_valid=100, n_test=200, seed=0):
    """Write monitor.json and monitor.md (beside the checkpoint unless out_dir). Returns the dict."""
    out_dir = out_dir or os.path.dirname(os.path.abspath(ppo_path))
    run_ = agents.load_run(ppo_path, None, device, batch_size, seed)
    rng = random.Random(seed)
    V, T = Episodes(run_, "valid", n_valid, rng), Episodes(run_, "test", n_test, rng)
    R = dict(env=run_.env_name, n_valid=n_valid, n_test=n_test, budgets=list(BUDGETS), headline=HEADLINE,
             no_monitor=float(np.mean([e.success for e in T.eps])),
             always=float(np.mean([T.expert_success(i, 0) for i in range(len(T.eps))])),
             failures=int(sum(not e.success for e in T.eps)),
             with_mistake=int(sum(m is not None for m in T.mistake)), rows={})
    for sel in SCORERS:  # a threshold of -inf (never hand over) always fits a budget
        R["rows"][sel] = {str(b): dict(how=how, threshold=th, **T.outcome(T.handovers(sel, how, th)))
                          for b, (how, th) in choose(V, sel, BUDGETS).items()}
    report.save_table(out_dir, "monitor", R, table(R))
    return R


def table(R):
    f = report.fmt
    b = str(HEADLINE)
    L = [f"## {R['env']}: halting monitor on greedy PPO test episodes ({R['n_test']} tasks; choices on "
         f"{R['n_valid']} validation tasks)", "",
         f"Success % without a monitor {f(R['no_monitor'])}, with the expert from the start {f(R['always'])}; "
         f"{R['failures']} failures, {R['with_mistake']} with a critical mistake.", "",
         "| scorer | " + " | ".join(f"success at {x} / 100 (used)" for x in R["budgets"])
         + f" | at {b}: running score | before the mistake | needless |",
         "|---|" + "---:|" * len(R["budgets"]) + "---|---:|---:|"]
    for sel, row in R["rows"].items():
        h = row[b]
        L.append(f"| {sel} | " + " | ".join(f"{f(row[str(x)]['success'])} ({row[str(x)]['requests']:.0f})"
                                            for x in R["budgets"])
                 + f" | {h['how']} | {h['before_mistake']} of {h['handovers']} | {h['needless']} of {h['handovers']} |")
    return L


def main(argv):
    report.table_main(argv, "monitor.py", "The halting monitor: success against requests for help, per scorer.",
                      check)


if __name__ == "__main__":
    main(sys.argv[1:])
