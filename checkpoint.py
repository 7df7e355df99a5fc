"""
checkpoint.py: a run's checkpoints for nanoPA: save and load them (atomically, refusing a missing, truncated or
foreign file and one of another world or tokenizer), the training state a PPO run resumes from, the GPT of a
checkpoint, which checkpoint of a run folder is its trained policy, and the mean of several runs' weights (a seed
soup).

Tested in test_pa.py (the checkpoints section); used by every script that reads or writes a run.
"""

import dataclasses
import os
import random

import numpy as np
import torch

import pa
import tokenizer
from model import GPT, GPTConfig


def _strip_compile_prefix(obj):
    """torch.compile wraps modules and prefixes their state_dict keys with '_orig_mod.'."""
    if isinstance(obj, dict):
        return {(k.replace("_orig_mod.", "") if isinstance(k, str) else k): _strip_compile_prefix(v)
                for k, v in obj.items()}
    return obj


def save(path, payload):
    """Atomic torch.save: a crash mid-write leaves the previous checkpoint intact. By convention
    payload holds "model" (state_dict), "config" (GPTConfig fields), "tokenizer" (tokenizer_spec)
    and "env_name"; anything else (optimizer, step, beta, RNG states) is stored as given."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(_strip_compile_prefix(payload), path + ".tmp")
    os.replace(path + ".tmp", path)


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint here; the message says why (the command lines print it)."""


def load(path, env_name=None, tokenizer_spec=None, map_location="cpu"):
    """Load a checkpoint; refuse (CheckpointError) a missing, truncated or foreign file, and one made for
    another environment or tokenizer."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path} (train one with: python train.py)")
    try:  # weights_only=False: our own checkpoints also hold optimizer and numpy RNG states
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many kinds here: a zip error, an unpickling error, a bad magic number
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or another kind of file: "
                              f"{type(e).__name__})") from e
    if not isinstance(ckpt, dict) or not {"model", "config", "tokenizer", "env_name"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a nanoPA checkpoint (it lacks model, config, tokenizer, env_name)")
    if env_name is not None and ckpt.get("env_name") != env_name:
        raise CheckpointError(f"checkpoint {path} was trained on environment {ckpt.get('env_name')!r}, "
                              f"not {env_name!r}")
    if tokenizer_spec is not None and ckpt.get("tokenizer") != tokenizer_spec:
        raise CheckpointError(f"checkpoint {path} was trained with a different tokenizer "
                         f"({(ckpt.get('tokenizer') or {}).get('name')!r}); its token ids mean other "
                         f"things here: retrain or rebuild the tokenizer from the checkpoint")
    return _strip_compile_prefix(ckpt)


def save_run(path, net, cfg, enc, weights=None, **extra):
    """A run's checkpoint of net: its weights (or these, of net's shape), shape, the tokenizer, the world, beta and
    the whole training config (config.Config), plus any extra fields (stage, iteration, optimizer and RNG states)."""
    weights = net.state_dict() if weights is None else weights
    save(path, dict(model=weights, config=dataclasses.asdict(net.config),
                               tokenizer=tokenizer.tokenizer_spec(enc), env_name=cfg.env, beta=cfg.beta,
                               train_config=dataclasses.asdict(cfg), **extra))


def policy_path(out_dir):
    """The trained policy of a run folder, the one PA is read from: the seed soup (ppo_soup.pt, train.py --seeds)
    where there is one, else the mean of its late PPO iterates (ppo_avg.pt, train.py --average_from), else its
    last iterate (ppo.pt)."""
    for name in ("ppo_soup.pt", "ppo_avg.pt"):
        if os.path.exists(os.path.join(out_dir, name)):
            return os.path.join(out_dir, name)
    return os.path.join(out_dir, "ppo.pt")


TRAINING_STATE = ("optimizer", "rng", "gen", "sample_gen", "iter", "critic", "critic_optimizer", "average")


def training_state(opt, gen, sample_gen, critic=None, critic_opt=None, average=None, averaged=0):
    """What a PPO checkpoint holds beside the policy, so that a resumed run goes on as if it had never stopped:
    the optimizer's state, the global random states (python, numpy, torch) and the two generators' (minibatch
    order, action sampling), a separate critic with its optimizer, and the running mean of the weights with the
    number of iterates in it. restore_training_state puts it back."""
    rng = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    return dict(optimizer=opt.state_dict(), rng=rng, gen=gen.get_state(), sample_gen=sample_gen.get_state(),
                **(dict(critic=critic.state_dict(), critic_optimizer=critic_opt.state_dict()) if critic is not None
                   else {}),
                **(dict(average=average, averaged=averaged) if averaged else {}))


def restore_training_state(ck, opt, gen, sample_gen, critic=None, critic_opt=None, device="cpu"):
    """Put a PPO checkpoint's training state (training_state) back into these objects and the global random
    states. Returns its running mean of the weights, on device (None: it held none)."""
    opt.load_state_dict(ck["optimizer"])
    if critic is not None:
        critic.load_state_dict(ck["critic"])
        critic_opt.load_state_dict(ck["critic_optimizer"])
    random.setstate(ck["rng"]["python"])
    np.random.set_state(ck["rng"]["numpy"])
    torch.set_rng_state(ck["rng"]["torch"])
    gen.set_state(ck["gen"])
    sample_gen.set_state(ck["sample_gen"])
    return None if ck.get("average") is None else {k: v.to(device) for k, v in ck["average"].items()}


def soup(paths):
    """(the mean of the weights of these PPO checkpoints, the first one's checkpoint dict without its training
    state): a "seed soup" of runs from one reference. Refused unless they share shape, tokenizer, world, beta and
    --actions; that they share one reference is left to the caller."""
    cks = [load(p) for p in paths]
    setup = lambda ck: (ck["config"], ck["tokenizer"], ck["env_name"], ck.get("beta"),
                        ck.get("train_config", {}).get("actions", "any"), sorted(ck["model"]))
    for p, ck in zip(paths[1:], cks[1:]):
        if setup(ck) != setup(cks[0]):
            raise CheckpointError(f"{p} and {paths[0]} differ in shape, tokenizer, world, beta or --actions: only "
                                  f"runs of one setup can be averaged")
    avg = cks[0]["model"]
    for k, ck in enumerate(cks[1:], 2):  # the running mean: the mean of k-1 runs moved 1/k of the way to the k-th
        avg = pa.merge_weights(avg, ck["model"], 1 / k)
    return avg, {k: v for k, v in cks[0].items() if k not in TRAINING_STATE + ("model", "averaged")}


def add_policy_arg(parser, beside="its reference: ref.pt beside it"):
    """The scripts' --ckpt: a trained policy, by default the one in out/ (policy_path)."""
    parser.add_argument("--ckpt", default=policy_path("out"),
                        help=f"the trained policy (default: out/ppo_soup.pt, else out/ppo_avg.pt, else out/ppo.pt; "
                             f"{beside})")


def load_run(path, cfg, enc, device):
    """(net, checkpoint dict) of a run's checkpoint, refused unless it is of cfg's world and enc's tokenizer."""
    ck = load(path, env_name=cfg.env, tokenizer_spec=tokenizer.tokenizer_spec(enc))
    return net_of(ck, device), ck


def net_of(ck, device):
    """The GPT of a loaded checkpoint, with its weights, on device."""
    net = GPT(GPTConfig(**ck["config"])).to(device)
    net.load_state_dict(ck["model"])
    return net
