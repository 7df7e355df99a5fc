"""
tokenizer.py: the tokenizer of every world, a tiktoken `Encoding` built offline by a tiny byte-level BPE
trained on the world's own text. All 256 single bytes are tokens, so any string round-trips. Two special
tokens: END ends every action, PAD fills ragged batches (masks, never ids, say what is padding). Its spec
(tokenizer_spec) is saved in every checkpoint and checked on load. Tested in test_pa.py (the model.py section).
"""
import re
from collections import Counter

import tiktoken

# -----------------------------------------------------------------------------
# tokenizer

END = "<|end|>"  # ends every action: generation stops when the model emits it
PAD = "<|pad|>"  # fills ragged batches; code never looks for it, masks say what is padding
MAX_VOCAB = 1024  # 256 bytes + merges + the 2 special tokens

# Pre-tokenisation: BPE merges never cross these pieces. A word keeps its leading space, a word may
# carry its opening bracket ("click[", " search["), letters+digits stay together (" p07"), every
# other character is its own piece ("]", "|", "$", ":"). Written with ASCII classes only so that
# Python's `re` (used by the trainer) and tiktoken's regex engine split every string identically.
# Every character is matched by some branch, which is what makes the encoding lossless.
PAT_STR = (r" ?[A-Za-z]+\[| ?[A-Za-z][A-Za-z0-9]*| ?[0-9]+| ?[^ \t\n\rA-Za-z0-9]"
           r"|[ \t\n\r]+(?![^ \t\n\r])|[ \t\n\r]+")


def train_bpe(texts, n_merges):
    """Byte-level BPE: returns the merged tokens (bytes) in the order they were learned.
    Deterministic: ties between equally frequent pairs go to the pair of smaller ids."""
    pieces = Counter(p for text in texts for p in re.findall(PAT_STR, text))
    words = [list(p.encode("utf-8")) for p in pieces]  # token ids, starting from the 256 bytes
    freqs = list(pieces.values())
    vocab = [bytes([i]) for i in range(256)]
    ids = {b: i for i, b in enumerate(vocab)}
    counts, where = Counter(), {}  # pair -> weighted count, pair -> words that (may) hold it
    for wi, w in enumerate(words):
        for pair in zip(w, w[1:]):
            counts[pair] += freqs[wi]
            where.setdefault(pair, set()).add(wi)
    merged = []
    while len(merged) < n_merges and counts:
        pair, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if n < 2:
            break  # a pair seen once is not worth a token
        new = vocab[pair[0]] + vocab[pair[1]]
        if new not in ids:  # (two different pairs can spell the same bytes: keep one token)
            ids[new] = len(vocab)
            vocab.append(new)
            merged.append(new)
        c = ids[new]
        # only the words holding the pair change: take their pairs out, merge, put them back
        for wi in sorted(where.pop(pair)):
            w, f = words[wi], freqs[wi]
            for p in zip(w, w[1:]):
                counts[p] -= f
                if counts[p] == 0:
                    del counts[p]
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(c)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                counts[p] += f
                where.setdefault(p, set()).add(wi)
    return merged


def tokenizer_spec(enc):
    """The tokenizer's full definition as a JSON-able dict (stored in every checkpoint)."""
    ranks = sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1])
    return {"name": enc.name, "pat_str": enc._pat_str,
            "tokens": [b.hex() for b, _ in ranks],  # token with rank i is tokens[i]
            "special_tokens": dict(enc._special_tokens)}


def tokenizer_from_spec(spec):
    ranks = {bytes.fromhex(h): i for i, h in enumerate(spec["tokens"])}
    special = dict(spec["special_tokens"])
    return tiktoken.Encoding(spec["name"], pat_str=spec["pat_str"], mergeable_ranks=ranks,
                             special_tokens=special, explicit_n_vocab=len(ranks) + len(special))


_TOKENIZERS = {}  # (name, vocab_size, texts) -> Encoding, so that building one costs once per process


def build_tokenizer(texts, name="custom", vocab_size=MAX_VOCAB):
    """A tiktoken Encoding trained on `texts` (for a world: envs.tokenizer_texts(name)) and called
    nanopa-<name>. Same inputs -> same ids, every run."""
    key = (name, vocab_size, tuple(texts))
    if key not in _TOKENIZERS:
        merged = train_bpe(key[2], vocab_size - 256 - 2)
        tokens = [bytes([i]) for i in range(256)] + merged
        spec = {"name": f"nanopa-{name}", "pat_str": PAT_STR, "tokens": [b.hex() for b in tokens],
                "special_tokens": {END: len(tokens), PAD: len(tokens) + 1}}
        _TOKENIZERS[key] = tokenizer_from_spec(spec)
    return _TOKENIZERS[key]


def end_id(enc):
    return enc.encode_single_token(END)


def pad_id(enc):
    return enc.encode_single_token(PAD)


def encode_action(enc, text):
    """Action text -> its tokens, terminated by END (what the policy is trained to produce)."""
    return enc.encode(text, disallowed_special=()) + [end_id(enc)]


def decode_action(enc, tokens):
    """Sampled action tokens -> text, cut at the first END (a missing END just means max length)."""
    tokens = list(tokens)
    if end_id(enc) in tokens:
        tokens = tokens[:tokens.index(end_id(enc))]
    return enc.decode(tokens)
