"""
Tests for worlds.py (the house and travel worlds): the shop's battery, run on both. Run: python -m pytest -q test_worlds.py
"""
import math
import random
import statistics

import pytest

import envs
import worlds

WORLDS = ["house", "travel"]


def random_episode(env, rng, p_invalid=0.1):
    """Random valid actions (and now and then an invalid one); returns [(obs, action, reward, info)]."""
    obs, out = env.reset(), []
    while not env.done:
        a = rng.choice(env.actions()) if rng.random() > p_invalid else rng.choice(["", "go to moon", "book[h0]"])
        obs2, r, done, info = env.step(a)
        out.append((obs, a, r, info))
        obs = obs2
    out.append((obs, None, None, None))
    return out


def run_expert(env):
    while not env.done:
        _, r, _, info = env.step(envs.expert_action(env))
    return r, info


def brute_q(task, state, action):
    """Q* by plain enumeration of every action sequence and outcome (no memo, no pruning)."""
    return sum(p * (r + (0.0 if d else brute_v(task, s2))) for p, s2, r, d in worlds.transitions(task, state, action))


def brute_v(task, state):
    return max(brute_q(task, state, a) for a in list(task.moves(state[0])) + ["not an action"])


# ----------------------------------------------------------------------------- determinism and cloning

@pytest.mark.parametrize("name", WORLDS)
def test_same_task_and_seed_give_identical_episodes(name):
    for task in range(4):
        a = random_episode(envs.make_env(name, task=task, seed=3), random.Random(task))
        b = random_episode(envs.make_env(name, task=task, seed=3), random.Random(task))
        assert a == b, "same task, seed and actions must give identical pages and rewards"
    assert envs.make_env(name, task=4, seed=0).reset() == envs.make_env(name, task=4, seed=99).reset()


@pytest.mark.parametrize("name", WORLDS)
def test_clone_evolves_independently(name):
    env = envs.make_env(name, split="valid", task=7, seed=1)
    env.step(envs.expert_action(env))
    before = (env.state, env.obs())
    c = env.clone()
    assert c.task is env.task, "clones share the immutable task (and its oracle memo)"
    steps_c = [c.step(a)[:3] for a in [envs.expert_action(c), "junk", c.actions()[-1]]]
    assert (env.state, env.obs()) == before, "stepping a clone must not move the original"
    steps_e = [env.step(a)[:3] for a in [envs.expert_action(env), "junk", env.actions()[-1]]]
    assert steps_c == steps_e, "a clone carries the same RNG state, so the same actions give the same outcomes"


# ----------------------------------------------------------------------------- the oracle

@pytest.mark.parametrize("name,split,task,warmup,steps", [
    ("house", "train", 0, 0, 4), ("house", "train", 5, 2, 4), ("house", "valid", 1, 3, 4), ("house", "test", 3, 4, 4),
    ("travel", "train", 0, 0, 4), ("travel", "valid", 2, 1, 4), ("travel", "test", 3, 2, 3)])
def test_oracle_equals_brute_force_on_tiny_budgets(name, split, task, warmup, steps):
    # a few expert steps first, so that the small budget starts somewhere interesting (an object in reach)
    env = envs.make_env(name, split=split, task=task, seed=task)
    for _ in range(warmup):
        env.step(envs.expert_action(env))
    env.state = (env.state[0], steps, env.state[2])
    for a, q in env.optimal_q().items():
        assert q == pytest.approx(brute_q(env.task, env.state, a), abs=1e-12), f"Q*({a}) differs from brute force"
    assert env.optimal_value() == pytest.approx(brute_v(env.task, env.state), abs=1e-12)
    assert env.q_star("no such action") == pytest.approx(brute_q(env.task, env.state, "x"), abs=1e-12)


def test_house_pruning_is_exact_on_every_kind():
    # a lower bound on the steps still needed prunes hopeless states: compare with brute force where it bites
    # (small budgets), on states along noisy episodes of every task type, also with the look-alike in hand
    kinds, rng = {}, random.Random(0)
    for task in range(60):
        kinds.setdefault(worlds.get_house_task("train", task).kind, []).append(task)
    assert set(kinds) == set(worlds.KINDS)
    for kind, tasks in kinds.items():
        for task in tasks[:2]:
            env = envs.make_env("house", task=task, seed=task)
            for t in range(8):
                core = env.state[0]
                cores = [core] + ([core[:4] + (worlds.HELD,)] if all(w != worlds.HELD for w, _ in core[3]) else [])
                for core in cores:
                    for steps in (2, 3) if t % 2 else (4,):
                        v = worlds.solve(env.task, core, steps)[0]
                        assert v == pytest.approx(brute_v(env.task, (core, steps, "")), abs=1e-12), (kind, core)
                env.step(envs.noisy_expert_action(env, rng, 0.3))
                if env.done:
                    break


@pytest.mark.parametrize("name", WORLDS)
def test_invalid_action_q_is_the_same_page_one_step_later(name):
    env = envs.make_env(name, task=5)
    q = env.q_star("click[[[")
    env.step("click[[[")
    assert q == pytest.approx(env.optimal_value()), "Q*(no-op) = V*(same page, one step less)"


@pytest.mark.parametrize("name,max_steps", [("house", 7), ("travel", 5)])
def test_expert_averages_to_optimal_value(name, max_steps):
    # tight budgets and tasks where V* is well below 1, so that bad luck shows
    tasks = [t for t in range(40) if 0.2 < envs.make_env(name, "valid", t, max_steps=max_steps).optimal_value() < 0.97]
    for task in tasks[:2]:
        v0 = envs.make_env(name, "valid", task, max_steps=max_steps).optimal_value()
        rewards = [run_expert(envs.make_env(name, "valid", task, seed=s, max_steps=max_steps))[0] for s in range(300)]
        se = statistics.pstdev(rewards) / math.sqrt(len(rewards))
        assert abs(statistics.mean(rewards) - v0) <= 4 * se + 1e-9, f"valid/{task}: {statistics.mean(rewards)} vs {v0}"
    assert len(tasks) >= 2


@pytest.mark.parametrize("name,n", [("house", 24), ("travel", 100)])
def test_optimal_value_on_test_set_is_high(name, n):
    values = {False: [], True: []}
    for task in range(n):
        env = envs.make_env(name, split="test", task=task)
        values[env.unseen].append(env.optimal_value())
    for unseen, v in values.items():
        assert statistics.mean(v) >= 0.95, f"mean V*(s0) on the {'unseen' if unseen else 'seen'} half: {statistics.mean(v)}"


@pytest.mark.parametrize("name", WORLDS)
def test_world_is_stochastic_on_the_optimal_path(name):
    mattering = 0
    for task in range(12):
        env = envs.make_env(name, split="valid", task=task, seed=task)
        branched = differs = False
        while not env.done:
            a = envs.expert_action(env)
            outs = worlds.transitions(env.task, env.state, a)
            branched |= len(outs) >= 2
            vs = {round(r + (0 if d else worlds.solve(env.task, s[0], s[1])[0]), 9) for _, s, r, d in outs}
            differs |= len(vs) >= 2
            env.step(a)
        assert branched, f"task {task}: no action on the optimal path had two or more outcomes"
        mattering += differs
    assert mattering >= 4, "the draws should change V* on some optimal paths"


def test_soft_q_matches_brute_force_with_uniform_reference():
    for name in WORLDS:
        env, beta, invalid_mass = envs.make_env(name, task=2, max_steps=3), 0.3, 0.2
        calls = []

        def ref(batch):
            calls.append(len(batch))
            return [{a: (1 - invalid_mass) / len(acts) for a in acts} for _, acts in batch]

        def soft_v(st):
            acts = list(env.task.moves(st[0]))
            terms = [((1 - invalid_mass) / len(acts), soft_q(st, a)) for a in acts] + [(invalid_mass, soft_q(st, "?"))]
            return beta * math.log(sum(p * math.exp(q / beta) for p, q in terms))

        def soft_q(st, a):
            return sum(p * (r + (0.0 if d else soft_v(s2))) for p, s2, r, d in worlds.transitions(env.task, st, a))

        out = env.soft_optimal_q(ref, beta)
        assert len(calls) == 1, "the reference is called once, batched"
        for a in env.actions():
            assert out[a] == pytest.approx(soft_q(env.state, a), abs=1e-10)
        assert out[None] == pytest.approx(soft_v(env.state), abs=1e-10)
        hard = env.optimal_q()
        soft = env.soft_optimal_q(lambda b: [{a: 1 / len(acts) for a in acts} for _, acts in b], 1e-4)
        assert max(abs(soft[a] - q) for a, q in hard.items()) < 0.01, "soft Q -> hard Q* as beta -> 0"


# ----------------------------------------------------------------------------- actions, prompts, vocabulary

@pytest.mark.parametrize("name", WORLDS)
def test_random_strings_never_raise(name):
    rng = random.Random(0)
    pieces = ["go to ", "fridge 1", "take ", "apple 1", "book[", "]", "f3", "click[", "é", "日本", "\n", "\x00", " ", "🙂"]
    env = envs.make_env(name, task=1, max_steps=10_001)
    for i in range(10_000):
        if env.done:  # a lucky string finished the task
            env = envs.make_env(name, task=1, max_steps=10_001)
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        text = "x" * 5000 if i % 500 == 0 else text
        steps, valid = env.steps_left, text in env.actions()  # "go to fridge 1" may come up: a real command
        obs, r, done, info = env.step(text)
        assert info["valid"] == valid and env.steps_left == steps - 1
        if not valid:
            assert r == 0.0 and "note: " + env.task.invalid_note in obs


@pytest.mark.parametrize("name", WORLDS)
def test_running_out_of_steps_is_truncation(name):
    env = envs.make_env(name, task=0, max_steps=3)
    results = [env.step("nope") for _ in range(3)]
    obs, r, done, info = results[-1]
    assert done and r == 0.0 and info["truncated"] and not info["success"]
    assert not results[0][2] and not results[0][3]["truncated"]
    assert env.step("nope")[2], "stepping a finished episode is a harmless no-op"


@pytest.mark.parametrize("name", WORLDS)
def test_prompts_are_short_and_markov(name):
    lengths, n_actions = [], []
    for task in range(15):
        env = envs.make_env(name, task=task, seed=task)
        rng = random.Random(task)
        while not env.done:
            obs = env.obs()
            assert f"steps left: {env.steps_left}" in obs and obs.startswith(("instruction: book", "your task is to: "))
            assert obs == worlds.render(env.task, env.state), "the prompt is a pure function of the state"
            lengths.append(len(obs))
            n_actions.append(len(env.actions()))
            env.step(envs.noisy_expert_action(env, rng, 0.3))
    assert 200 <= statistics.median(lengths) <= 480 and max(lengths) < 700, statistics.median(lengths)
    assert max(n_actions) <= 12, "the actions line lists at most a dozen commands"


@pytest.mark.parametrize("name", WORLDS)
def test_every_emitted_word_is_in_the_vocabulary(name):
    vocab = set(envs.vocabulary(name))
    assert envs.vocabulary(name) == sorted(vocab) and len(vocab) < 400
    rng = random.Random(1)
    for i in range(60):
        env = envs.make_env(name, split=["train", "valid", "test"][i % 3], task=i, seed=i)
        for obs, a, _, info in random_episode(env, rng, p_invalid=0.2):
            words = set(envs.WORD_RE.findall(obs)) | (set(envs.WORD_RE.findall(a)) if info and info["valid"] else set())
            assert words <= vocab, f"words outside the vocabulary: {words - vocab}"
        if i % 3 == 0:  # the expert's path too (it reaches states random play rarely does)
            run_expert(envs.make_env(name, split=env.split, task=i, seed=i))
        for m in env.task.cache.values():  # every action the env ever offered in this task, and its notes
            for a, outs in m.items():
                assert set(envs.WORD_RE.findall(a + " " + " ".join(o[3] for o in outs))) <= vocab, a


def test_sample_texts_is_deterministic():
    for name in WORLDS:
        a, b = envs.sample_texts(name, n=40), envs.sample_texts(name, n=40)
        assert a == b and len(a) == 40


def test_make_env_dispatch_and_split_sizes():
    assert isinstance(envs.make_env("house"), worlds.HouseEnv) and isinstance(envs.make_env("travel"), worlds.TravelEnv)
    assert envs.make_env("house").max_steps == worlds.HOUSE_MAX_STEPS and envs.make_env("shop").max_steps == envs.MAX_STEPS
    with pytest.raises(ValueError):
        envs.make_env("castle")
    with pytest.raises(ValueError):
        envs.make_env("travel", split="test", task=500)


# ----------------------------------------------------------------------------- house specifics

def _house_task(kind, n=None):
    return next(t for t in range(500) if worlds.get_house_task("train", t).kind == kind
                and (n is None or len(worlds.get_house_task("train", t).names) == n))


def test_house_has_all_six_task_types_and_alfworld_commands():
    kinds = {worlds.get_house_task("train", t).kind for t in range(60)}
    assert kinds == set(worlds.KINDS)
    env = envs.make_env("house", task=_house_task("heat"), seed=0)
    seen = set()
    while not env.done:
        seen |= {a.split()[0] for a in env.actions()}
        env.step(envs.expert_action(env))
    assert env.state[2].startswith("you put") and {"go", "take", "heat", "put"} <= seen


def test_binning_the_only_object_is_irreversible_and_fatal():
    env = envs.make_env("house", task=_house_task("put", n=1), seed=0)
    while not any(a.startswith("put") for a in env.actions()):  # the expert until it holds the object
        env.step(envs.expert_action(env))
    env.step("go to garbagecan 1")
    binning = next(a for a in env.actions() if a.endswith("in garbagecan 1"))
    assert env.is_irreversible(binning) and not env.is_irreversible(env.actions()[-1])
    assert env.optimal_value() > 0.9 and env.q_star(binning) == 0.0
    obs = env.step(binning)[0]
    assert "is gone" in obs and env.optimal_value() == 0.0


def test_heating_twice_ruins_the_object():
    env = envs.make_env("house", task=_house_task("heat"), seed=0)
    while not any(a.startswith("heat") for a in env.actions()):
        env.step(envs.expert_action(env))
    heat = next(a for a in env.actions() if a.startswith("heat"))
    while "(hot)" not in env.obs():  # the microwave fails now and then: retry
        env.step(heat)
    assert env.is_irreversible(heat) and env.optimal_value() - env.q_star(heat) > envs.DELTA


# ----------------------------------------------------------------------------- travel specifics

def test_travel_partial_credit():
    t = worlds.get_travel_task("train", 0)
    good = next(h for h, p in t.lists[t.queries.index(f"hotels near {t.area}")][0] if h == t.good1)
    assert t.score((t.safe, t.flights[t.safe][3]), (good, t.hotels[good][3])) == 1.0
    assert t.score((t.trap, t.flights[t.trap][3]), (good, t.hotels[good][3])) == 0.8, "the top pick breaks the budget"


def test_expensive_flight_is_the_first_critical_mistake():
    env = envs.make_env("travel", split="valid", task=4, seed=2)
    c = env.clone()
    c.step(f"search[flights to {env.task.city}]")
    assert c.is_irreversible(f"book[{env.task.trap}]") and c.optimal_value() - c.q_star(f"book[{env.task.trap}]") >= 0.15
    actions = [f"search[flights to {env.task.city}]", f"book[{env.task.trap}]"]
    c.step(actions[-1])
    while not c.done:
        actions.append(envs.expert_action(c))
        c.step(actions[-1])
    assert envs.first_critical_mistake(env, actions) == 1


def test_unseen_halves_use_held_out_layouts_and_pairs():
    for split, n in [("train", 200), ("valid", 200)]:
        for task in range(n):
            h, t = worlds.get_house_task(split, task), worlds.get_travel_task(split, task)
            assert h.recs in worlds.LAYOUTS["kitchen"][:6] + worlds.LAYOUTS["living"][:6]
            assert (t.area, t.feat) not in worlds.HELD_OUT_TRAVEL
            assert not {(a, f) for _, a, f, _ in t.hotels.values()} & worlds.HELD_OUT_TRAVEL
    for task in range(40):
        h, t = worlds.get_house_task("test", task), worlds.get_travel_task("test", task)
        assert h.unseen == t.unseen == (task % 2 == 1)
        assert (h.recs in worlds.LAYOUTS["kitchen"][6:] + worlds.LAYOUTS["living"][6:]) == h.unseen
        assert ((t.area, t.feat) in worlds.HELD_OUT_TRAVEL) == t.unseen


# ----------------------------------------------------------------------------- experts and mistakes

@pytest.mark.parametrize("name", WORLDS)
def test_noisy_expert_makes_critical_and_costly_mistakes(name):
    rng, kinds = random.Random(0), {"irreversible critical": 0, "costly": 0}
    for task in range(30):
        env = envs.make_env(name, split="valid", task=task, seed=task)
        while not env.done:
            a = envs.noisy_expert_action(env, rng, 0.5)
            loss = env.optimal_value() - env.q_star(a)
            if loss > envs.DELTA and env.is_irreversible(a):
                kinds["irreversible critical"] += 1
            elif 1e-9 < loss <= envs.DELTA:
                kinds["costly"] += 1
            env.step(a)
    assert min(kinds.values()) >= 2, kinds
