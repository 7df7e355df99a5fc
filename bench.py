"""
bench.py: performance benchmarks for nanoPA (matmul peak, training throughput, KV-cache generation, environment
and oracle speed).

    python bench.py                        # everything, ~1 min on a 2-core CPU; writes bench.json
    python bench.py --quick                # fewer repeats, a few seconds
    python bench.py --only=gen --out=gen.json
    python bench.py --only=envs            # environment steps/s and oracle solve time, every world

Each benchmark is a small function registered with @bench("name") that takes the parsed arguments
and the results so far and returns a dict of figures; main runs the selected ones in order, prints
one line each and writes all figures as one JSON object. To add one, write another such function below.

FLOP/s are "implied": 6 * N FLOPs per trained token (forward + backward through N matmul weights)
plus 12 * n_layer * n_embd * T for attention (nanoGPT's estimate, which counts the full T x T
scores although causal attention needs only half), divided by a matmul peak measured here, now.
"""

import argparse
import json
import os
import time

import torch
from torch.nn import functional as F

import model
import tokenizer
import config

BENCHES = {}  # name -> function(args, results) -> dict, in the order they run


def bench(name):
    def register(fn):
        BENCHES[name] = fn
        return fn
    return register


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, device, reps):
    """Fastest of `reps` timed calls after one warm-up: the least disturbed by other load."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def compute_dtype(device):
    """What the model's matmuls run in under model.autocast_ctx: the dtype whose peak we compare to."""
    cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if cuda_bf16 else torch.float32


def make_model(args):
    preset = config.Config().preset  # the model train.py trains by default, on any device
    torch.manual_seed(0)
    sizes = {k: config.PRESETS[preset][k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    cfg = model.GPTConfig(**sizes, vocab_size=tokenizer.MAX_VOCAB)  # ids only, no tokenizer needed
    return preset, cfg, model.GPT(cfg).to(args.device)


@bench("peak")
def bench_peak(args, results):
    # large square matmuls in the compute dtype (fp32 on a CPU), the best rate of several
    n = 2048 if args.device == "cpu" else 8192
    dtype = compute_dtype(args.device)
    a = torch.randn(n, n, device=args.device, dtype=dtype)
    b = torch.randn(n, n, device=args.device, dtype=dtype)
    dt = best_time(lambda: a @ b, args.device, 3 if args.quick else 10)
    return {"peak_flops": 2 * n ** 3 / dt, "peak_matmul_n": n, "peak_dtype": str(dtype).replace("torch.", "")}


@bench("model")
def bench_model(args, results):
    # one training step = forward, next-token cross-entropy + a value loss, backward, AdamW
    preset, cfg, m = make_model(args)
    if args.compile:
        m = torch.compile(m)  # fuses the elementwise ops; the first steps (warm-up) pay for compiling
    B = 64 if args.device != "cpu" else 32  # the per-step batch that saturates 2 cores
    T = cfg.block_size
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    idx = torch.randint(0, cfg.vocab_size, (B, T + 1), device=args.device)
    x, y = idx[:, :-1], idx[:, 1:]

    def step():
        with model.autocast_ctx(args.device):
            logits, values = m(x)
            loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), y.reshape(-1))
            loss = loss + values.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n_steps = 2 if args.quick else 5
    dt = best_time(lambda: [step() for _ in range(n_steps)], args.device, 2 if args.quick else 3) / n_steps
    tokens_per_s = B * T / dt
    flops_per_token = 6 * m.num_params() + 12 * cfg.n_layer * cfg.n_embd * T
    out = {"train_preset": preset, "train_params": m.num_params(), "train_batch": [B, T],
           "train_tokens_per_s": tokens_per_s, "train_flops": tokens_per_s * flops_per_token}
    if "peak_flops" in results:
        out["train_flops_frac_of_peak"] = out["train_flops"] / results["peak_flops"]
    return out


@bench("gen")
def bench_gen(args, results):
    # batch 64, ragged prompts of ~128 tokens, 8 sampled tokens each (no stop token: all 8 are made)
    preset, cfg, m = make_model(args)
    m.eval()
    B, new = 64, 8
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(112, 145, (B,), generator=g).tolist()  # mean 128
    prompts = [torch.randint(0, cfg.vocab_size - 2, (n,), generator=g).tolist() for n in lengths]
    out = {"gen_batch": B, "gen_prompt_mean": sum(lengths) / B, "gen_new_tokens": new}
    for use_cache in (True, False):
        def run():
            with model.autocast_ctx(args.device):
                m.generate(prompts, new, temperature=1.0, use_cache=use_cache)
        dt = best_time(run, args.device, 2 if args.quick else 5)
        out["gen_tokens_per_s_" + ("cache" if use_cache else "nocache")] = B * new / dt
    out["gen_cache_speedup"] = out["gen_tokens_per_s_cache"] / out["gen_tokens_per_s_nocache"]
    return out


@bench("envs")
def bench_envs(args, results):
    """Every world: environment steps/s under random actions, the oracle's solve time per test task
    (first call, cold memo), mean V*(s0) on the test halves, and the expert's / noisy expert's scores."""
    import random
    import statistics
    import envs
    n_tasks, out = (20 if args.quick else 100), {}
    for name in ("shop", "house", "travel"):
        env, rng, t0, n = envs.make_env(name, task=0), random.Random(0), time.perf_counter(), 0
        while time.perf_counter() - t0 < (0.5 if args.quick else 2.0):
            env.step(rng.choice(env.actions() + [""]))
            n += 1
            if env.done:
                env = envs.make_env(name, task=n % 50, seed=n)
        out[f"{name}_env_steps_per_s"] = n / (time.perf_counter() - t0)
        times, v0 = [], {False: [], True: []}
        for i in range(n_tasks):
            env = envs.make_env(name, split="test", task=i)
            t0 = time.perf_counter()
            v0[env.unseen].append(env.optimal_value())
            times.append(time.perf_counter() - t0)
        out[f"{name}_oracle_solve_s_median"] = statistics.median(times)
        out[f"{name}_oracle_solve_s_max"] = max(times)
        out[f"{name}_v_star_s0_seen"] = statistics.mean(v0[False])
        out[f"{name}_v_star_s0_unseen"] = statistics.mean(v0[True])
        nrng = random.Random(0)
        for label, policy in (("expert", envs.expert_action),
                              ("noisy_expert", lambda e: envs.noisy_expert_action(e, nrng))):
            rewards = []
            for i in range(n_tasks):
                env = envs.make_env(name, split="valid", task=i, seed=i)
                while not env.done:
                    _, r, _, _ = env.step(policy(env))
                rewards.append(r)
            out[f"{name}_{label}_success"] = sum(r == 1.0 for r in rewards) / len(rewards)
            out[f"{name}_{label}_reward"] = statistics.mean(rewards)
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {list(BENCHES)}")
    p.add_argument("--out", default="bench.json", help="where the JSON results go")
    p.add_argument("--quick", action="store_true", help="fewer and smaller repeats")
    p.add_argument("--device", default="auto", help="cuda, mps, cpu, or auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for the training benchmark")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    args = p.parse_args(argv)
    try:
        args.device = model.get_device(args.device)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    if "model" in names and "peak" not in names:
        names.insert(0, "peak")  # the training figure is reported as a fraction of this peak
    results = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "quick": args.quick, "compile": args.compile}
    for name in names:
        t0 = time.perf_counter()
        figures = BENCHES[name](args, results)
        results.update(figures)
        shown = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"{name:6s} ({time.perf_counter() - t0:.1f}s) | {shown}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
