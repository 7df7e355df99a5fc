"""Tests for model.py: tokenizer, GPT, KV-cache sampling, scoring, checkpoints.
Run: python -m pytest -q test_model.py"""

import random
import re

import pytest
import torch

import model

# A stand-in for envs.sample_texts: shop-like prompts and actions, used when envs.py is missing.
_COLORS = ["black", "white", "red", "blue", "green", "grey", "brown", "navy"]
_TYPES = ["jacket", "shirt", "shoes", "boots", "hat", "dress", "jeans", "sweater", "backpack"]
_ATTRS = ["leather", "waterproof", "cotton", "wool", "slim", "vintage", "lightweight"]


def _standin_texts(n, seed=0):
    rng, out = random.Random(seed), []
    for _ in range(n):
        t, a, c = rng.choice(_TYPES), rng.choice(_ATTRS), rng.choice(_COLORS)
        items = [f"p{rng.randint(0, 99):02d}" for _ in range(3)]
        actions = [f"search[{a} {t}]", f"search[{t}]"] + [f"click[{i}]" for i in items] + ["buy now"]
        page = "\n".join(f"[{i}] {rng.choice(_ATTRS)} {rng.choice(_COLORS)} {t} | ${rng.randint(5, 99)}.99"
                         for i in items)
        out.append(f"instruction: find a {a} {t} with color: {c}, and price lower than "
                   f"{rng.randint(10, 99)} dollars\n{page}\nsteps left: {rng.randint(1, 9)}\n"
                   f"actions: " + " | ".join(actions))
        out.extend(actions)
    return out


def _texts(n=200):
    """Pages and actions of n episodes: from envs.py when it exists, else the stand-in."""
    try:
        import envs
        return list(envs.sample_texts("shop", n))
    except ImportError:
        return _standin_texts(n)


@pytest.fixture(scope="module")
def enc():
    try:
        import envs  # noqa: F401
        return model.build_tokenizer("shop")
    except ImportError:
        return model.build_tokenizer("shop", texts=_standin_texts(200))


@pytest.fixture(scope="module")
def gpt(enc):
    torch.manual_seed(0)
    cfg = model.GPTConfig(**{**model.PRESETS["cpu"], "n_layer": 2, "n_embd": 64, "block_size": 64},
                          vocab_size=enc.n_vocab)
    return model.GPT(cfg).eval()


def _ragged_prompts(n_vocab, lengths=(5, 12, 1, 9)):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, n_vocab - 2, (n,), generator=g).tolist() for n in lengths]


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_is_small_with_special_tokens(enc):
    assert enc.n_vocab <= 1024, f"expected at most 1024 ids, got {enc.n_vocab}"
    assert model.end_id(enc) != model.pad_id(enc), "END and PAD should be distinct tokens"
    assert enc.decode([model.end_id(enc)]) == model.END, "END should decode to its own text"


def test_tokenizer_is_deterministic():
    texts = _standin_texts(50)
    a, b = model.build_tokenizer("x", texts=texts), model.build_tokenizer("x", texts=texts)
    assert model.tokenizer_spec(a) == model.tokenizer_spec(b), "same texts should give the same tokenizer"


def test_tokenizer_roundtrips_env_texts(enc):
    bad = [t for t in _texts(200) if enc.decode(enc.encode(t)) != t]
    assert not bad, f"decode(encode(s)) != s for {len(bad)} texts, e.g. {bad[:1]!r}"


def test_tokenizer_roundtrips_random_unicode(enc):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x7f)] + ["\n", "\t", "\r", "  ", "é", "ß", "中", "🙂", "\u00a0"]
    for _ in range(200):
        s = "".join(rng.choice(alphabet) if rng.random() < 0.7 else chr(rng.randint(1, 0x2FFFF))
                    for _ in range(rng.randint(0, 40)))
        s = s.encode("utf-8", "replace").decode("utf-8", "replace")  # no lone surrogates
        assert enc.decode(enc.encode(s, disallowed_special=())) == s, f"round trip failed on {s!r}"


def test_pretokenizer_covers_every_character():
    rng = random.Random(1)
    for _ in range(200):
        s = "".join(chr(rng.choice([rng.randint(0, 0x7f), rng.randint(0x80, 0x2FFF)])) for _ in range(30))
        assert "".join(re.findall(model.PAT_STR, s)) == s, f"pre-tokenisation dropped characters of {s!r}"


def test_tokenizer_single_tokens_for_common_pieces(enc):
    for piece in ["click[", "search[", " search[", " jacket", " black", " |", "instruction", " dollars"]:
        assert len(enc.encode(piece)) == 1, f"{piece!r} should be one token, got {enc.encode(piece)}"


def test_tokenizer_spec_roundtrip(enc):
    enc2 = model.tokenizer_from_spec(model.tokenizer_spec(enc))
    text = _texts(2)[0]
    assert enc2.encode(text) == enc.encode(text), "a tokenizer rebuilt from its spec should encode identically"
    assert model.end_id(enc2) == model.end_id(enc), "END id should survive the spec"


def test_encode_decode_action(enc):
    toks = model.encode_action(enc, "click[p07]")
    assert toks[-1] == model.end_id(enc), "an encoded action should end with END"
    assert model.decode_action(enc, toks + [5, 6]) == "click[p07]", "decoding should stop at END"

# ----------------------------------------------------------------------------- model


def test_cpu_preset_has_about_1M_params(enc):
    m = model.GPT(model.GPTConfig(**model.PRESETS["cpu"], vocab_size=enc.n_vocab))
    n = m.num_params()
    assert 0.7e6 < n < 1.5e6, f"cpu preset should have ~1M parameters, got {n}"


def test_forward_shapes(gpt):
    logits, values = gpt(torch.zeros(3, 7, dtype=torch.long))
    assert logits.shape == (3, 7, gpt.config.vocab_size), f"bad logits shape {tuple(logits.shape)}"
    assert values.shape == (3, 7) and values.dtype == torch.float32, "values should be (B, T) fp32"


def test_evaluate_aligned_to_tokens(gpt):
    idx = torch.randint(0, 100, (2, 6))
    lp, v, ent = gpt.evaluate(idx, temperature=0.7)
    logits, values = gpt(idx)
    ref = torch.log_softmax(logits[0, 2].float() / 0.7, -1)[idx[0, 3]]
    assert torch.allclose(lp[0, 3], ref, atol=1e-6), "logprobs[:, t] should score token t from position t-1"
    assert torch.allclose(v[:, 1:], values[:, :-1]), "values[:, t] should be the value at position t-1"
    assert (lp[:, 0] == 0).all() and (v[:, 0] == 0).all() and (ent[:, 0] == 0).all(), "column 0 should be 0"


def test_pack_masks_actions_only():
    idx, mask = model.pack([[1, 2, 3], [4]], [[5, 9], [6, 7, 9]], pad_id=0)
    assert idx.tolist() == [[1, 2, 3, 5, 9], [4, 6, 7, 9, 0]], f"unexpected packing {idx.tolist()}"
    assert mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]], f"unexpected action_mask {mask.tolist()}"


def test_cached_logprobs_match_full_forward(gpt, enc):
    prompts = _ragged_prompts(enc.n_vocab)
    g = torch.Generator().manual_seed(0)
    actions, lps, vals = gpt.generate(prompts, 10, temperature=0.8, stop_id=model.end_id(enc), generator=g)
    idx, mask = model.pack(prompts, actions, model.pad_id(enc))
    lp, v, _ = gpt.evaluate(idx, temperature=0.8)
    for b in range(len(prompts)):
        sel = mask[b].bool()
        assert (lp[b, sel] - lps[b]).abs().max() <= 1e-4, f"row {b}: cached log-probs differ from evaluate()"
        assert (v[b, sel] - vals[b]).abs().max() <= 1e-4, f"row {b}: cached values differ from evaluate()"


def test_greedy_is_deterministic(gpt, enc):
    prompts = _ragged_prompts(enc.n_vocab)
    a1, _, _ = gpt.generate(prompts, 8, greedy=True)
    a2, _, _ = gpt.generate(prompts, 8, greedy=True)
    assert a1 == a2, "greedy decoding should give the same tokens twice"


def test_cache_and_no_cache_agree(gpt, enc):
    prompts = _ragged_prompts(enc.n_vocab)
    a1, lp1, _ = gpt.generate(prompts, 8, greedy=True, use_cache=True)
    a2, lp2, _ = gpt.generate(prompts, 8, greedy=True, use_cache=False)
    assert a1 == a2, "cached and uncached greedy decoding should give the same tokens"
    assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(lp1, lp2)), "and the same log-probs"


def test_padding_does_not_change_a_row(gpt, enc):
    prompts = _ragged_prompts(enc.n_vocab)
    alone, _, _ = gpt.generate(prompts[:1], 6, greedy=True)
    batched, _, _ = gpt.generate(prompts, 6, greedy=True)
    assert alone[0] == batched[0], "a row's output should not depend on the other rows' lengths"


def test_generator_makes_sampling_reproducible(gpt, enc):
    prompts = _ragged_prompts(enc.n_vocab)
    a1, _, _ = gpt.generate(prompts, 8, generator=torch.Generator().manual_seed(3))
    a2, _, _ = gpt.generate(prompts, 8, generator=torch.Generator().manual_seed(3))
    assert a1 == a2, "the same generator seed should give the same samples"


def test_generation_stops_at_stop_id(gpt, enc):
    prompts = _ragged_prompts(enc.n_vocab)
    first, _, _ = gpt.generate(prompts, 1, greedy=True)
    stop = first[0][0]  # the token row 0 emits first: use it as the stop token
    actions, lps, vals = gpt.generate(prompts, 8, greedy=True, stop_id=stop)
    assert actions[0] == [stop], f"row 0 should stop right after emitting the stop token, got {actions[0]}"
    assert all(len(a) == len(lp) == len(v) for a, lp, v in zip(actions, lps, vals)), "lengths should agree"


def test_top_k_samples_only_top_tokens(gpt, enc):
    prompts = _ragged_prompts(enc.n_vocab)
    greedy, _, _ = gpt.generate(prompts, 1, greedy=True)
    sampled, _, _ = gpt.generate(prompts, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    assert sampled == greedy, "top_k=1 sampling should equal greedy decoding"

# ----------------------------------------------------------------------------- checkpoints


def _payload(m, enc):
    return {"model": m.state_dict(), "config": vars(m.config), "tokenizer": model.tokenizer_spec(enc),
            "env_name": "shop"}


def test_save_load_gives_identical_outputs(gpt, enc, tmp_path):
    path = str(tmp_path / "ckpt.pt")
    model.save_checkpoint(path, _payload(gpt, enc))
    ckpt = model.load_checkpoint(path, env_name="shop", tokenizer_spec=model.tokenizer_spec(enc))
    m2 = model.GPT(model.GPTConfig(**ckpt["config"])).eval()
    m2.load_state_dict(ckpt["model"])
    idx = torch.randint(0, 100, (2, 9))
    assert torch.equal(gpt(idx)[0], m2(idx)[0]), "a reloaded model should give identical logits"
    assert not (tmp_path / "ckpt.pt.tmp").exists(), "the temporary file should be renamed away"


def test_load_refuses_mismatch(gpt, enc, tmp_path):
    path = str(tmp_path / "ckpt.pt")
    model.save_checkpoint(path, _payload(gpt, enc))
    with pytest.raises(ValueError, match="environment"):
        model.load_checkpoint(path, env_name="alfworld")
    other = model.tokenizer_spec(model.build_tokenizer("other", texts=["something else entirely"]))
    with pytest.raises(ValueError, match="tokenizer"):
        model.load_checkpoint(path, tokenizer_spec=other)


def test_compile_prefix_is_stripped(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    model.save_checkpoint(path, {"model": {"_orig_mod.lm_head.weight": torch.zeros(1)}})
    assert list(model.load_checkpoint(path)["model"]) == ["lm_head.weight"], "'_orig_mod.' should be stripped"


def test_autocast_is_a_noop_on_cpu():
    with model.autocast_ctx("cpu"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32, "CPU should compute in fp32"


def test_sampling_follows_the_model_distribution(gpt):
    temperature, n = 0.08, 4000  # a low temperature makes a few tokens likely enough to count
    probs = torch.softmax(gpt(torch.tensor([[3, 1, 4]]))[0][0, -1] / temperature, -1)
    assert probs.max() > 0.1, "test setup: the distribution should be peaked"
    actions, _, _ = gpt.generate([[3, 1, 4]] * n, 1, temperature=temperature,
                                 generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(torch.tensor([a[0] for a in actions]), minlength=probs.numel()) / n
    assert (freq - probs).abs().max() < 0.03, "sampled frequencies should match the model's probabilities"
