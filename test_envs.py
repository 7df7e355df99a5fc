"""
Tests for envs.py (the shop world and its oracle). Run: python -m pytest -q test_envs.py
"""
import math
import random
import statistics

import pytest

import envs


def random_episode(env, rng, p_invalid=0.1):
    """Random valid actions (and now and then an invalid one); returns [(obs, action, reward, info)]."""
    obs, out = env.reset(), []
    while not env.done:
        a = rng.choice(env.actions()) if rng.random() > p_invalid else rng.choice(["", "click[nothing]", "buy"])
        obs2, r, done, info = env.step(a)
        out.append((obs, a, r, info))
        obs = obs2
    out.append((obs, None, None, None))
    return out


def brute_q(task, state, action):
    """Q* by plain enumeration of every action sequence and outcome (no memo): the reference for the oracle."""
    return sum(p * (r + (0.0 if d else brute_v(task, s2))) for p, s2, r, d in envs.transitions(task, state, action))


def brute_v(task, state):
    acts = list(envs.moves(task, state[0], state[3])) + ["not an action"]
    return max(brute_q(task, state, a) for a in acts)


# ----------------------------------------------------------------------------- determinism and cloning

def test_same_task_and_seed_give_identical_episodes():
    for task in range(5):
        a = random_episode(envs.make_env(task=task, seed=3), random.Random(task))
        b = random_episode(envs.make_env(task=task, seed=3), random.Random(task))
        assert a == b, "same task, seed and actions must give identical pages and rewards"


def test_task_identity_does_not_depend_on_seed():
    assert envs.make_env(task=4, seed=0).reset() == envs.make_env(task=4, seed=99).reset()


def test_clone_evolves_independently():
    env = envs.make_env(split="valid", task=7, seed=1)
    env.step(env.actions()[0])
    before = (env.state, env.obs())
    c = env.clone()
    assert c.task is env.task, "clones share the immutable task (and its oracle memo)"
    steps_c = [c.step(a)[:3] for a in [c.actions()[0], "junk", c.actions()[-1]]]
    assert (env.state, env.obs()) == before, "stepping a clone must not move the original"
    steps_e = [env.step(a)[:3] for a in [env.actions()[0], "junk", env.actions()[-1]]]
    assert steps_c == steps_e, "a clone carries the same RNG state, so the same actions give the same outcomes"


# ----------------------------------------------------------------------------- the oracle

@pytest.mark.parametrize("split,task,max_steps", [("train", 0, 4), ("train", 1, 4), ("valid", 2, 4), ("test", 3, 3)])
def test_oracle_equals_brute_force_on_tiny_budgets(split, task, max_steps):
    env = envs.make_env(split=split, task=task, max_steps=max_steps)
    for a, q in env.optimal_q().items():
        assert q == pytest.approx(brute_q(env.task, env.state, a), abs=1e-12), f"Q*({a}) differs from brute force"
    assert env.optimal_value() == pytest.approx(brute_v(env.task, env.state), abs=1e-12)
    assert env.q_star("no such action") == pytest.approx(brute_q(env.task, env.state, "x"), abs=1e-12)


def test_oracle_equals_brute_force_mid_episode():
    # from an item page with 5 steps left: every option, description and going back are enumerated
    for task in range(12):
        env = envs.make_env(task=task, seed=task)
        env.step(envs.expert_action(env))
        env.step(envs.expert_action(env))
        if env.state[0] != "item":
            continue
        env.state = ("item", 5, "", env.state[3])
        assert env.optimal_value() == pytest.approx(brute_v(env.task, env.state), abs=1e-12)
        return
    pytest.fail("the expert never reached an item page in two steps")


def test_invalid_action_q_is_the_same_page_one_step_later():
    env = envs.make_env(task=5)
    q = env.q_star("click[[[")
    env.step("click[[[")
    assert q == pytest.approx(env.optimal_value()), "Q*(no-op) = V*(same page, one step less)"


def test_expert_averages_to_optimal_value():
    for split, task in [("valid", 0), ("valid", 1), ("test", 2), ("test", 3)]:
        v0 = envs.make_env(split=split, task=task).optimal_value()
        rewards = []
        for seed in range(300):
            env = envs.make_env(split=split, task=task, seed=seed)
            while not env.done:
                _, r, _, _ = env.step(envs.expert_action(env))
            rewards.append(r)
        se = statistics.pstdev(rewards) / math.sqrt(len(rewards))
        assert abs(statistics.mean(rewards) - v0) <= 4 * se + 1e-9, f"{split}/{task}: mean {statistics.mean(rewards)} vs V* {v0}"


def test_optimal_value_on_test_set_is_high():
    values = {False: [], True: []}
    for task in range(envs.N_TASKS["test"]):
        env = envs.make_env(split="test", task=task)
        values[env.unseen].append(env.optimal_value())
    assert len(values[True]) == len(values[False]) == 250
    for unseen, v in values.items():
        assert statistics.mean(v) >= 0.95, f"mean V*(s0) on the {'unseen' if unseen else 'seen'} half: {statistics.mean(v)}"


def test_world_is_stochastic_on_the_optimal_path():
    mattering = 0
    for task in range(20):
        env = envs.make_env(split="valid", task=task, seed=task)
        branched, differs = False, False
        while not env.done:
            a = envs.expert_action(env)
            outs = envs.transitions(env.task, env.state, a)
            branched |= len(outs) >= 2
            vs = {round(r + (0 if d else envs.solve(env.task, s[0], s[1], s[3])[0]), 9) for _, s, r, d in outs}
            differs |= len(vs) >= 2
            env.step(a)
        assert branched, f"task {task}: no action on the optimal path had two or more outcomes"
        mattering += differs
    assert mattering >= 10, "the draws should change V* on most optimal paths (a stock-out, a lost match)"


def test_soft_q_approaches_hard_q_as_beta_shrinks():
    env = envs.make_env(split="valid", task=3, max_steps=4)

    def ref(batch):  # a lopsided reference that leaves 5% for invalid text
        return [{a: 0.95 * (i + 1) / sum(range(1, len(acts) + 1)) for i, a in enumerate(acts)} for _, acts in batch]

    hard = env.optimal_q()
    errs = []
    for beta in [0.1, 0.01, 0.001]:
        soft = env.soft_optimal_q(ref, beta)
        errs.append(max(abs(soft[a] - q) for a, q in hard.items()))
        errs[-1] = max(errs[-1], abs(soft[None] - max(hard.values())))
    assert errs[-1] < 0.01 and errs[-1] <= errs[0], f"soft Q should approach hard Q* as beta -> 0: {errs}"


@pytest.mark.parametrize("invalid_mass", [0.0, 0.2])
def test_soft_q_matches_brute_force_with_uniform_reference(invalid_mass):
    env, beta = envs.make_env(task=2, max_steps=3), 0.3
    calls = []

    def ref(batch):
        calls.append(len(batch))
        return [{a: (1 - invalid_mass) / len(acts) for a in acts} for _, acts in batch]

    def soft_v(st):  # direct soft Bellman recursion over the enumerated tree
        acts = list(envs.moves(env.task, st[0], st[3]))
        terms = [((1 - invalid_mass) / len(acts), soft_q(st, a)) for a in acts]
        if invalid_mass > 0:
            terms.append((invalid_mass, soft_q(st, "")))
        return beta * math.log(sum(p * math.exp(q / beta) for p, q in terms))

    def soft_q(st, a):
        return sum(p * (r + (0.0 if d else soft_v(s2))) for p, s2, r, d in envs.transitions(env.task, st, a))

    out = env.soft_optimal_q(ref, beta)
    assert calls and len(calls) == 1, "the reference is called once, batched"
    for a in env.actions():
        assert out[a] == pytest.approx(soft_q(env.state, a), abs=1e-10)
    assert out[None] == pytest.approx(soft_v(env.state), abs=1e-10)


# ----------------------------------------------------------------------------- actions, prompts, vocabulary

def test_random_strings_never_raise():
    rng = random.Random(0)
    pieces = ["click[", "]", "search[", "[", "buy now", "é", "日本", "\n", "\x00", " ", "next >", "<", "p07", "🙂"]
    env = envs.make_env(task=1, max_steps=10_001)
    for i in range(10_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        if i % 500 == 0:
            text = "x" * 5000
        steps = env.steps_left
        obs, r, done, info = env.step(text)
        if text not in env.actions():
            assert not info["valid"] and r == 0.0 and env.steps_left == steps - 1
            assert "note: invalid action" in obs
    assert not env.done


def test_running_out_of_steps_is_truncation():
    env = envs.make_env(task=0, max_steps=3)
    results = [env.step("nope") for _ in range(3)]
    obs, r, done, info = results[-1]
    assert done and r == 0.0 and info["truncated"] and not info["success"]
    assert not results[0][2] and not results[0][3]["truncated"]
    assert env.step("click[buy now]")[2], "stepping a finished episode is a harmless no-op"


def test_buying_is_irreversible_and_scored():
    env = envs.make_env(task=6, seed=0)
    while not env.done:
        a = envs.expert_action(env)
        assert env.is_irreversible(a) == (a == "click[buy now]")
        _, r, done, info = env.step(a)
    assert done and not info["truncated"] and info["success"] == (r == 1.0)


def test_reward_formula():
    t = envs.get_task("train", 0)
    match = next(p for p in t.products.values() if p.kind == "match")
    right = tuple(dict(t.required).get(dim) for dim, _ in match.options)
    assert t.score(match, right) == 1.0
    assert t.score(match, (None,) * len(right)) == pytest.approx(3 / (3 + len(t.required)))
    other = next(p for p in t.products.values() if p.kind == "type")
    assert t.score(other, right) == 0.5, "another type of the same category: type factor 0.5"


def test_buying_an_out_of_stock_variant_fails():
    t = envs.get_task("train", 0)
    match = next(p for p in t.products.values() if p.kind == "match")
    sel = tuple(dict(t.required).get(dim) for dim, _ in match.options)
    env = envs.make_env(task=0)
    env.state = ("item", 5, "", (match.pid, 1, sel))  # the fragile colour (the required one) is out of stock
    assert "(out of stock)" in env.obs()
    _, r, done, info = env.step("click[buy now]")
    assert done and r == 0.0 and "out of stock" in env.obs()


def test_prompts_are_short_and_markov():
    lengths = []
    for task in range(20):
        env = envs.make_env(task=task, seed=task)
        while not env.done:
            obs = env.obs()
            assert obs.startswith("instruction: find ") and f"steps left: {env.steps_left}" in obs
            assert obs == envs.render(env.task, env.state), "the prompt is a pure function of the state"
            lengths.append(len(obs))
            env.step(envs.noisy_expert_action(env, random.Random(task), 0.3))
    assert 250 <= statistics.median(lengths) <= 520 and max(lengths) < 800, statistics.median(lengths)


def test_every_emitted_word_is_in_the_vocabulary():
    vocab = set(envs.vocabulary())
    assert envs.vocabulary() == sorted(vocab) and len(vocab) < 400
    rng = random.Random(1)
    for i in range(150):
        split = ["train", "valid", "test"][i % 3]
        env = envs.make_env(split=split, task=i, seed=i)
        for obs, a, _, info in random_episode(env, rng, p_invalid=0.2):
            words = set(envs.WORD_RE.findall(obs)) | (set(envs.WORD_RE.findall(a)) if info and info["valid"] else set())
            assert words <= vocab, f"words outside the vocabulary: {words - vocab}"
        for key, m in env.task.moves.items():  # every action the env ever offered in this task
            for a in m:
                assert set(envs.WORD_RE.findall(a)) <= vocab, a


def test_sample_texts_is_deterministic():
    a, b = envs.sample_texts(n=60), envs.sample_texts(n=60)
    assert a == b and len(a) == 60 and any(t.startswith("instruction") for t in a)


# ----------------------------------------------------------------------------- tasks and splits

def test_catalog_has_matches_and_near_misses():
    with_type = 0
    for task in range(50):
        t = envs.get_task("train", task)
        kinds = [p.kind for p in t.products.values()]
        assert 16 <= len(kinds) <= 24 and kinds.count("match") >= 2
        assert {"pricey", "attr", "missing", "filler"} <= set(kinds)
        with_type += "type" in kinds  # absent only when no other type may carry both attributes (held out)
        assert sum(p.sponsored for p in t.products.values()) == 1
        assert t.instruction.endswith(f"price lower than {t.cap} dollars")
        assert envs._title(t.attrs, t.type) in t.queries
    assert with_type >= 40, "most tasks have the right attributes on another type of the same category"


def test_unseen_split_uses_held_out_pairs_only_there():
    def pairs(t):
        out = {(p.type, a) for p in t.products.values() for a in p.attrs}
        for q in t.queries:  # a query's words name a type and attributes too
            w = q.split()
            out |= {(w[-1], a) for a in w[:-1]}
        return out

    for split, n in [("train", 300), ("valid", 200)]:
        for task in range(n):
            assert not pairs(envs.get_task(split, task)) & envs.HELD_OUT, f"{split}/{task} shows a held-out pair"
    for task in range(40):
        env = envs.make_env(split="test", task=task)
        assert env.unseen == (task % 2 == 1)
        target = {(env.task.type, a) for a in env.task.attrs}
        assert bool(target & envs.HELD_OUT) == env.unseen


def test_split_sizes_are_enforced():
    assert envs.N_TASKS == {"valid": 200, "test": 500}
    with pytest.raises(ValueError):
        envs.make_env(split="test", task=500)


# ----------------------------------------------------------------------------- experts and mistakes

def test_noisy_expert_rates():
    env = envs.make_env(split="valid", task=1)
    rng = random.Random(0)
    assert all(envs.noisy_expert_action(env, rng, 0.0) == envs.expert_action(env) for _ in range(20))
    qs = env.optimal_q()
    picks = [envs.noisy_expert_action(env, rng, 1.0) for _ in range(50)]
    assert all(qs[a] < max(qs.values()) for a in picks), "with eps=1 every action is a (plausible) mistake"


def test_first_critical_mistake():
    env = envs.make_env(split="valid", task=4, seed=2)
    actions = []
    c = env.clone()
    while not c.done:
        actions.append(envs.expert_action(c))
        c.step(actions[-1])
    assert envs.first_critical_mistake(env, actions) is None, "the expert makes no mistake"
    bad = actions[:2] + ["click[buy now]"]  # buy straight after opening the item, nothing selected
    c = env.clone()
    for a in actions[:2]:
        c.step(a)
    if c.state[0] == "item":
        assert envs.first_critical_mistake(env, bad) == 2
    c, wasted = env.clone(), ["junk"]  # one wasted step, then the expert from wherever that leads
    c.step("junk")
    while not c.done:
        wasted.append(envs.expert_action(c))
        c.step(wasted[-1])
    assert envs.first_critical_mistake(env, wasted) is None, "one wasted step early is costly, not critical"
