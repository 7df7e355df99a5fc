"""
config.py: every option of train.py with its default and what it does, the presets that size the model and the
budget, and the command line that overrides them (--key=value; an unknown key or a bad value is refused in one
line that names the valid ones).

    cfg = resolve(parse_args(["--beta=0.1", "--device=cpu"]))   # a Config, its 0 = preset fields filled
"""
import dataclasses
import sys
from dataclasses import dataclass

import torch

import envs
import model as M


@dataclass
class Config:
    # run
    env: str = "shop"                # which world (envs.make_env)
    out_dir: str = "out"             # checkpoints, logs and the report go here
    device: str = "auto"             # auto = cuda -> mps -> cpu
    preset: str = "cpu"              # model and budget: cpu (every measured figure, on any device) or gpu (26M
                                     # parameters: on an H200 its reference fit worse and PPO's KL ran away)
    seed: int = 1337                 # seeds python, numpy and torch
    stage: str = "all"               # sft, ppo, all (sft then ppo), eval (report from saved checkpoints) or prm
    init_from: str = "scratch"       # scratch, or resume: continue from the last checkpoints in out_dir
    eval: bool = True                # write the evaluation report at the end of --stage=all (and eval, prm)
    # model (0 = take it from the preset)
    n_layer: int = 0
    n_head: int = 0
    n_embd: int = 0
    block_size: int = 0
    temperature: float = 1.0         # the ONE sampling temperature, also used for every log-prob
    max_action_tokens: int = 16      # --actions=any: a longer text is cut (and then invalid); available: refused
    # stage 1: behaviour cloning of the reference
    sft_episodes: int = 0            # noisy-expert demonstrations (0 = preset)
    sft_eps: float = 0.15            # the noisy expert's mistake rate: the reference must have room to improve
    sft_iters: int = 0               # optimizer steps (0 = preset)
    sft_batch: int = 64              # steps (prompt + action rows) per batch
    sft_lr: float = 2e-3
    sft_vf_coef: float = 0.5         # weight of the critic's regression on demonstration returns
    sft_early: float = 0.1           # also save the reference after this fraction of its steps (ref_early.pt)
    # stage 2: PPO with a per-token KL penalty
    beta: float = 0.2                # KL coefficient, fixed; PA = beta * log(pi / pi_ref) (0.05 before: an optimum
                                     # that far from the reference, PPO did not reach in budget; LOG.md)
    ppo_iters: int = 0               # iterations (0 = preset)
    episodes_per_iter: int = 0       # rollouts per iteration (0 = preset)
    task_pool: int = 0               # PPO draws its tasks from training tasks 0..N-1 (0 = any: a new task each time)
    samples_per_task: int = 1        # episodes of each drawn task per iteration (episodes_per_iter in all)
    advantage: str = "gae"           # gae; rloo: each episode's KL-shaped return less the mean of its task's others;
                                     # mc: the visited states' values from mc_rollouts re-rollouts; no critic in either
    mc_rollouts: int = 4             # with --advantage=mc: the policy's rollouts from a copy of each visited state
    consistency: float = 0.0         # weight of (beta * log pi/pi_ref(a|s) - (r + V(s') - V(s)))^2 on every sampled
                                     # step, V the critic's: path consistency, whose fixed point is pi* (0 = off)
    critic_warmup: int = 0           # iterations before PPO that fit only the critic, on the reference's own rollouts
    detach_value: bool = False       # the value loss trains the value head only, never the policy's trunk
    critic: str = "shared"           # shared: the policy's own value head; separate: a copy of the reference network
    actions: str = "available"       # available: sample only the available actions (agents.Agent); any: any text
    ppo_start: str = ""              # PPO starts from this checkpoint's weights, not the reference's (say a soup of
                                     # runs, diagnose.py --soup: a second round); the KL stays to out_dir/ref.pt
    kl: str = "exact"                # the KL penalty: exact, the whole KL(pi || pi_ref) over the vocabulary at each
                                     # action token, in the reward and, differentiated at that token, in the loss;
                                     # sampled: -beta log(pi/pi_ref) of each sampled token in the reward
    average_from: int = -1           # from this PPO iteration on, also keep the running mean of the policy's weights
                                     # (iterate averaging) in out_dir/ppo_avg.pt, the policy the report reads PA from
                                     # (-1 = a third of the way: iteration ppo_iters // 3 after any warm-up; 0 = off)
    seeds: int = 1                   # PPO runs from the reference, seeds seed, seed+1, ... (out_dir/seed<S>/);
                                     # above 1, PA is read from the mean of their policies' weights, a seed soup
                                     # (out_dir/ppo_soup.pt): N times PPO's time, for less of each run's own noise
    ppo_train: str = "all"           # the weights PPO moves: all, or parts of their names, comma-separated (say
                                     # .h.,ln_f: the blocks, not the token and position embeddings, which the output
                                     # layer shares); the rest keep their starting values. The value head always moves
    ppo_lr: float = 3e-4
    adam_eps: float = 1e-8           # Adam's epsilon in PPO: a weight whose gradient's RMS is well below it moves
                                     # in proportion to its gradient (SGD-like), not by about the learning rate
    anneal_lr: bool = False          # the learning rate falls linearly over the iterations, ppo_lr at the first to
                                     # ppo_lr / N at the last (CleanRL's default), critic and warm-up included
    gamma: float = 1.0               # discount over action tokens
    lam: float = 0.95                # GAE lambda
    lam_per: str = "token"           # token: lambda at every action token; action: only from one action to the next
                                     # (1 within an action), so the outcome reaches a decision k actions back as
                                     # lambda^k, not lambda^(its tokens)
    clip: float = 0.2                # policy ratio clip
    vclip: float = 0.2               # value clip around the rollout's values
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    update_epochs: int = 2           # passes over each iteration's rollouts
    minibatch: int = 0               # steps per minibatch (0 = preset)
    target_kl: float = 0.05          # stop the epoch loop early when approx_kl exceeds this
    max_grad_norm: float = 1.0
    # stage prm (optional): PA's other references and two trained reward models to compare it with (prm.py)
    prm_episodes: int = 512          # the PPO policy's episodes on training tasks that both reward models learn from
    prm_epochs: int = 4              # passes over them
    prm_lr: float = 1e-4
    merge_alphas: str = "0.2,0.5,0.7"  # weight merges ref + alpha * (policy - ref) saved as references for PA
    # evaluation (report.py)
    report: str = "auto"             # quick (fewer tasks where it samples), full, or auto: full on CUDA only
    batch_size: int = 256            # rows per model call in rollouts


PRESETS = {  # cpu: sized so that `python train.py` on a 2-core CPU takes about 23 minutes; the default on a GPU too,
    # since the gpu one (a 26M-parameter scale-up, opt-in) failed on an H200 under the earlier default recipe (free
    # text, the sampled KL, beta 0.05; LOG.md: "The GPU preset, run") and is untried under the current one.
    # PPO's 60 iterations of 43 episodes: as good a run as 128 episodes a time, in a third of the time (LOG.md)
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=256,  # ~0.92M parameters
                sft_episodes=2000, sft_iters=1000, ppo_iters=60, episodes_per_iter=43, minibatch=43),
    "gpu": dict(n_layer=8, n_head=8, n_embd=512, block_size=1024,  # ~26M parameters
                sft_episodes=6000, sft_iters=3000, ppo_iters=60, episodes_per_iter=512, minibatch=128),
}
STAGES, INITS = ("sft", "ppo", "all", "eval", "prm"), ("scratch", "resume")
CHOICES = dict(  # the options that take one of a few words
    env=tuple(envs.WORLDS), stage=STAGES, init_from=INITS, preset=tuple(PRESETS), report=("auto", "quick", "full"),
    critic=("shared", "separate"), actions=("any", "available"), kl=("sampled", "exact"),
    advantage=("gae", "rloo", "mc"), lam_per=("token", "action"))


def parse_args(argv, cfg=None, usage=__doc__):
    """--key=value overrides of Config; unknown keys and bad values are refused with the valid ones. --help prints
    usage (train.py passes its own docstring) and every option with its value."""
    cfg = cfg or Config()
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage)
            for f in dataclasses.fields(Config):
                print(f"  --{f.name}={getattr(cfg, f.name)}" + (f"  ({' | '.join(CHOICES[f.name])})"
                                                                 if f.name in CHOICES else ""))
            sys.exit(0)
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"bad argument {arg!r}: use --key=value (see --help)")
        key, val = arg[2:].split("=", 1)
        if key not in fields:
            raise SystemExit(f"unknown option --{key}; valid options: {', '.join(fields)}")
        typ = type(getattr(Config(), key))
        try:
            if typ is bool:
                if val.lower() not in ("1", "0", "true", "false"):
                    raise ValueError
                val = val.lower() in ("1", "true")
            else:
                val = typ(val)
        except ValueError:
            raise SystemExit(f"bad value for --{key}: {val!r} is not a {typ.__name__}")
        setattr(cfg, key, val)
    for key, valid in CHOICES.items():
        if getattr(cfg, key) not in valid:
            raise SystemExit(f"bad value for --{key}: {getattr(cfg, key)!r}; valid: {', '.join(valid)}")
    if cfg.kl == "exact" and cfg.advantage == "mc":
        raise SystemExit("--advantage=mc computes its own sampled KL penalty: add --kl=sampled (--kl=exact, "
                         "the default, puts the whole KL into the rewards)")
    if cfg.advantage != "gae" and (cfg.critic != "shared" or cfg.critic_warmup):
        raise SystemExit(f"--advantage={cfg.advantage} learns no critic: leave out --critic and --critic_warmup")
    if cfg.advantage != "gae" and cfg.gamma != 1:
        raise SystemExit(f"--advantage={cfg.advantage} sums the episode's rewards undiscounted: leave out --gamma")
    if cfg.consistency < 0 or (cfg.consistency and (cfg.advantage != "gae" or cfg.gamma != 1)):
        raise SystemExit(f"bad value for --consistency: {cfg.consistency}: it must be >= 0, and it needs a trained "
                         f"critic's values (not with --advantage=rloo or mc) and gamma = 1")
    if cfg.mc_rollouts < 1:
        raise SystemExit(f"bad value for --mc_rollouts: {cfg.mc_rollouts} must be at least 1")
    try:
        alphas = [float(a) for a in cfg.merge_alphas.split(",")]
    except ValueError:
        alphas = [-1.0]
    if not all(0 <= a <= 1 for a in alphas):
        raise SystemExit(f"bad value for --merge_alphas: {cfg.merge_alphas!r}; use numbers in [0, 1], e.g. 0.2,0.5,0.7")
    if not 0 < cfg.sft_early <= 1:
        raise SystemExit(f"bad value for --sft_early: {cfg.sft_early} must be in (0, 1]")
    if cfg.ppo_start and cfg.stage != "ppo":
        raise SystemExit("--ppo_start needs --stage=ppo: PPO from those weights, against an existing out_dir/ref.pt")
    return cfg


def resolve(cfg):
    """Fill the 0 = preset fields from the preset."""
    try:
        cfg.device = M.get_device(cfg.device)
    except ValueError as e:
        raise SystemExit(f"bad value for --device: {e}")
    for k, v in PRESETS[cfg.preset].items():
        if hasattr(cfg, k) and getattr(cfg, k) == 0:
            setattr(cfg, k, v)
    if cfg.samples_per_task < 1 or cfg.episodes_per_iter % cfg.samples_per_task:
        raise SystemExit(f"bad value for --samples_per_task: {cfg.samples_per_task} must be >= 1 and divide "
                         f"--episodes_per_iter ({cfg.episodes_per_iter})")
    if cfg.seeds < 1:
        raise SystemExit(f"bad value for --seeds: {cfg.seeds}; the number of PPO runs averaged, 1 or more")
    if cfg.ppo_train != "all":
        with torch.device("meta"):  # the names only: no memory, no time
            names = [n for n, _ in M.GPT(M.GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head,
                                                     n_embd=cfg.n_embd)).named_parameters()]
        for part in cfg.ppo_train.split(","):
            if not part or not any(part in n for n in names):
                raise SystemExit(f"bad value for --ppo_train: {part!r} is in no weight's name; use all, or parts of "
                                 f"these, comma-separated: {', '.join(names)}")
    last = cfg.critic_warmup + cfg.ppo_iters - 1
    if cfg.average_from not in (-1, 0) and not 0 < cfg.average_from <= last:
        raise SystemExit(f"bad value for --average_from: {cfg.average_from}; a PPO iteration from 1 to {last}, the "
                         f"first whose weights enter the mean (0 = off)")
    return cfg
