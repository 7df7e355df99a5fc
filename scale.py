"""
scale.py: a small model with PA search against a larger model without it, at measured compute per task.

The claim under test: a small model that searches with PA can outperform a much larger model trained on
final outcome rewards alone. Both models are trained by the same recipe (`python train.py`, the larger one with a
wider model, e.g. --n_embd=256: about 4x the parameters). On the same test tasks: the large model greedy and
with one sample, the small one greedy, with one sample, and best-of-N by PA and by its own log-prob (each
aggregation as the small run's report chose it on validation). Compute is counted as forward FLOPs,
2 * N * tokens, where N is a model's non-embedding parameters and tokens are every prompt and action token it
reads or writes (generation with a KV cache reads each once); PA's selection also runs the reference over the
same tokens. Attention's own FLOPs are left out (small next to 2 * N at these prompt lengths).

    python train.py --n_embd=256 --out_dir=out-large     # the larger model, same recipe
    python scale.py --small out/ppo_avg.pt --large out-large/ppo_avg.pt
"""
import argparse
import json
import os
import random
import sys

import numpy as np

import agents
import checkpoint
import report
import search as S

NS = (2, 4, 8)


def tokens(ep):
    return sum(len(s.prompt) + len(s.action) for s in ep.steps)


def compare(small_path, large_path, n_tasks=120, device="auto", seed=0, out=None):
    small, large = agents.load_run(small_path, device=device, seed=seed), agents.load_run(large_path, device=device, seed=seed)
    if small.env_name != large.env_name:
        raise checkpoint.CheckpointError(f"{small_path} and {large_path} are runs of different worlds")
    how = json.load(open(os.path.join(os.path.dirname(os.path.abspath(small_path)), "report.json")))["validation"]
    n_small, n_large = (r.ppo.policy.num_params() for r in (small, large))
    tasks, rng = list(range(n_tasks)), random.Random(seed)
    rows = {}
    for name, run_, n in (("large", large, n_large), ("small", small, n_small)):
        for mode, greedy in (("greedy", True), ("one sample", False)):
            eps = run_.episodes(run_.ppo, "test", tasks, [0], greedy=greedy)
            rows[f"{name}, {mode}"] = dict(success=report.rate([e.success for e in eps]),
                                           flops=2 * n * float(np.mean([tokens(e) for e in eps])))
    samples = small.episodes(small.ppo, "test", tasks, range(max(NS)))
    groups = [samples[i * max(NS):(i + 1) * max(NS)] for i in range(n_tasks)]
    for sel in ("pa", "logprob"):
        sc = [[S.trajectory_score(e, sel, how[sel]["how_bon"], small.ppo.beta, rng) for e in g] for g in groups]
        for k in NS:  # the first k samples of each task
            picked = [g[max(range(k), key=lambda i: s[i])].success for g, s in zip(groups, sc)]
            toks = float(np.mean([sum(tokens(e) for e in g[:k]) for g in groups]))
            rows[f"small, best-of-{k} by {sel}"] = dict(success=report.rate(picked),
                                                         flops=2 * n_small * toks * (2 if sel == "pa" else 1))
    R = dict(env=small.env_name, n_tasks=n_tasks, params=dict(small=n_small, large=n_large), rows=rows)
    out = out or os.path.dirname(os.path.abspath(small_path))
    report.save_table(out, "scale", R, table(R))
    return R


def table(R):
    f = report.fmt
    L = [f"## {R['env']}: small model with search against a larger one ({R['params']['small'] / 1e6:.2f}M and "
         f"{R['params']['large'] / 1e6:.2f}M non-embedding parameters; first {R['n_tasks']} test tasks)", "",
         "| policy | success % [95% CI] | forward GFLOPs per task |", "|---|---:|---:|"]
    for name, r in sorted(R["rows"].items(), key=lambda kv: kv[1]["flops"]):
        s = r["success"]
        L.append(f"| {name} | {f(s['rate'])} [{f(s['lo'])}, {f(s['hi'])}] | {r['flops'] / 1e9:.2f} |")
    return L


def main(argv):
    p = argparse.ArgumentParser(description="A small model with PA search against a larger one without, at "
                                            "measured compute.")
    p.add_argument("--small", default=checkpoint.policy_path("out"),
                   help="the small run's policy (report.json beside it)")
    p.add_argument("--large", default=checkpoint.policy_path("out-large"), help="the larger run's policy")
    p.add_argument("--n_tasks", type=int, default=120, help="test tasks")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    report.check_tasks(p, "n_tasks", args.n_tasks, "test")
    try:
        compare(args.small, args.large, args.n_tasks, args.device)
    except (checkpoint.CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"scale.py: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
