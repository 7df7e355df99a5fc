"""
model.py: a small GPT with a value head, KV-cache batched sampling and per-token log-probs for nanoPA (the
tokenizer is tokenizer.py; a run's checkpoints, checkpoint.py).

- GPT: nanoGPT's shape (pre-LayerNorm blocks, causal attention, tied embeddings) plus a scalar value
  head on the last hidden state: forward(idx) -> (logits, values).
- generate(): batched sampling over prompts of different lengths with a preallocated KV cache.
- evaluate(): per-token log-probs / values / entropies of given tokens, aligned to the tokens.
- copy_net: a trainable copy of a network; gradient_step: one clipped optimizer step that stops the run on a
  non-finite loss; get_device / autocast_ctx: where and in what precision it runs.

Tested in test_pa.py (the model.py section); benchmarked by python bench.py. Sizes: config.PRESETS.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from tokenizer import MAX_VOCAB


# -----------------------------------------------------------------------------
# model


@dataclass
class GPTConfig:
    block_size: int = 256  # longest prompt + action, in tokens
    vocab_size: int = MAX_VOCAB  # set from the tokenizer: enc.n_vocab
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # 0 keeps the PPO ratio exactly 1 on the first minibatch
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2 had them; slightly faster without)


class KVCache:
    """Keys and values of every layer for B rows, preallocated to T_max positions. Rows are
    LEFT-padded, so all rows share one write pointer `pos`."""

    def __init__(self, cfg, B, T_max):
        self.shape = (cfg.n_layer, B, cfg.n_head, T_max, cfg.n_embd // cfg.n_head)
        self.k = self.v = None  # allocated at the first write, in the dtype attention computes in
        self.pos = 0  # positions [0, pos) hold keys/values; advanced by GPT.forward after all layers

    def update(self, layer, k, v):
        if self.k is None:
            self.k = torch.empty(self.shape, device=k.device, dtype=k.dtype)
            self.v = torch.empty(self.shape, device=v.device, dtype=v.dtype)
        T = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]


class CausalSelfAttention(nn.Module):

    def __init__(self, cfg, layer):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.n_embd, self.dropout, self.layer = cfg.n_head, cfg.n_embd, cfg.dropout, layer

    def forward(self, x, attn_mask=None, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, T_past + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:  # plain right-padded batch: causality is all we need
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:  # (B, 1, T, T_past + T) bool, True = may attend
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, cfg, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, attn_mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), attn_mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    n_nets = 1  # networks run per forward pass (the Agent's count of forward passes)

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings
        self.value_head = nn.Linear(cfg.n_embd, 1)  # V(s) read off the same hidden state as the logits
        self.detach_value = False  # True: the value head reads a detached hidden state (its loss spares the trunk)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count; the position table is left out by default (it does no matmul work)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def new_cache(self, B, T_max):
        return KVCache(self.config, B, T_max)

    def forward(self, idx, pos=None, attn_mask=None, cache=None, last_only=False, select=None):
        """idx (B, T) -> logits (B, T, V), values (B, T) fp32. pos (T,) or (B, T) position ids
        (default 0..T-1); attn_mask (B, 1, T, T_past + T) bool; cache: a KVCache to read and
        extend; last_only: compute the heads at the last position only (sampling); select: a (B, T)
        bool mask of the positions that need logits, which are then returned flat as (N, V) (the
        LM head and the softmax over the vocabulary are most of the cost on prompt positions that
        nobody scores)."""
        B, T = idx.size()
        if pos is None:
            assert T <= self.config.block_size, f"sequence of {T} tokens > block_size {self.config.block_size}"
            pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, attn_mask, cache)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        values = self.value_head(x.detach() if self.detach_value else x).squeeze(-1).float()  # (B, T)
        logits = self.lm_head(x if select is None else x[select])  # (B, T, V) or (N, V)
        return logits, values

    def evaluate(self, idx, temperature=1.0, topk=0, action_mask=None, allowed=None, dist=False):
        """Per-token log-probs, values and entropies of a right-padded batch idx (B, T), all (B, T)
        fp32 and ALIGNED TO TOKENS: column t describes token t given tokens < t:
            logprobs[:, t] = log p(idx[:, t] | idx[:, :t])  (logits / temperature, fp32 log_softmax)
            values[:, t]   = value head at position t-1 = V(state before token t)
            entropy[:, t]  = entropy of the distribution token t was drawn from
        Column 0 has no predecessor and is 0. Differentiable. Padding on the right cannot affect
        earlier positions (causal), so no attention mask is needed: callers mask with action_mask.
        action_mask (B, T), optional: compute log-probs and entropies only where it is 1 (0
        elsewhere), the same numbers for a fraction of the work. topk > 0 adds a fourth output
        (B, T, topk): the largest log-probs of each of those distributions (self-certainty's input).
        allowed (N, V) bool, optional (with action_mask; N = its 1s after column 0, row by row): the tokens each
        of those distributions may produce; the others get probability 0 (constrained decoding, see generate).
        dist=True adds a last output: the whole distributions (N, V) of log-probs at the selected positions, row
        by row (N as for allowed), for an exact KL between two networks (kl_div)."""
        B, T = idx.shape
        # the distribution for token t comes from position t-1: select positions 0..T-2
        want = torch.ones(B, T - 1, dtype=torch.bool, device=idx.device) if action_mask is None \
            else action_mask[:, 1:] > 0  # (B, T-1)
        select = torch.cat([want, torch.zeros(B, 1, dtype=torch.bool, device=idx.device)], 1)  # (B, T)
        logits, values = self(idx, select=select)  # (N, V), (B, T)
        logp = log_softmax_over(logits.float() / temperature, allowed)  # (N, V)
        tok = idx[:, 1:][want]  # (N,) the tokens these distributions produced
        flat_lp = logp.gather(-1, tok[:, None]).squeeze(-1)  # (N,)
        flat_ent = entropy(logp)  # (N,)

        def unflatten(flat):  # (N, ...) -> (B, T, ...) with zeros elsewhere, column 0 included
            out = flat.new_zeros((B, T) + tuple(flat.shape[1:]))
            out[:, 1:][want] = flat
            return out
        values = torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], 1)
        out = (unflatten(flat_lp), values, unflatten(flat_ent))
        if topk:
            out += (unflatten(top_logprobs(logp, topk)),)
        if dist:
            out += (logp,)
        return out

    @torch.no_grad()
    def continuation_logprobs(self, prompts, conts, temperature=1.0, allowed=None):
        """The summed log-prob of each of many continuations of each prompt: prompts, S token lists; conts, per
        prompt a list of continuations (token lists, at least one token each). Returns per prompt a (k,) fp32 CPU
        tensor, the numbers evaluate() gives on every prompt + continuation row, for a fraction of the work: each
        prompt is written ONCE, followed by all its continuations in the same row. A continuation sees the prompt
        and its own earlier tokens, never another continuation (the attention mask), and its positions restart
        where the prompt ends, so each reads exactly as if it were alone after the prompt. Scoring every action
        of the thousands of states of a task (optimum.reference_probs) then costs one prompt per state, not one
        per action. allowed, optional: per prompt a trie {tokens so far: the token ids that may come next}, as
        for generate(); each token's log-prob is then renormalised over what its prefix allows."""
        device = self.lm_head.weight.device
        if not any(conts):
            return [torch.zeros(0) for _ in conts]
        seqs, pos, seg = [], [], []  # per row: tokens, position ids, 0 = prompt / j = continuation j / -1 = padding
        for p, cs in zip(prompts, conts):
            assert len(p) > 0 and all(len(c) > 0 for c in cs), "empty prompt or continuation"
            if len(p) + max(map(len, cs), default=0) > self.config.block_size:  # a row may be longer; a position not
                raise ValueError(f"prompt of {len(p)} tokens + a continuation of {max(map(len, cs), default=0)} > "
                                 f"block_size {self.config.block_size}")
            seqs.append(list(p) + [t for c in cs for t in c])
            pos.append(list(range(len(p))) + [len(p) + i for c in cs for i in range(len(c))])
            seg.append([0] * len(p) + [j + 1 for j, c in enumerate(cs) for _ in c])
        T = max(map(len, seqs))
        pad = lambda rows, v: torch.tensor([r + [v] * (T - len(r)) for r in rows], device=device)
        idx, pos, seg = pad(seqs, 0), pad(pos, 0), pad(seg, -1)  # (S, T) each
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)  # (S, T queries, T keys)
        mask = causal & (same | (seg[:, None, :] == 0)) | torch.eye(T, dtype=torch.bool, device=device)
        # the distribution of a continuation's first token comes from the prompt's last position, of each later
        # token from the position before it: select those positions, then read each token's log-prob off them
        select, src, tok, lengths = torch.zeros(len(seqs), T, dtype=torch.bool), [], [], []
        n = 0  # selected positions so far, in row-major order (the order of the logits below)
        for s, (p, cs) in enumerate(zip(prompts, conts)):
            select[s, len(p) - 1] = True
            last, at = n, len(p)
            n += 1
            for c in cs:
                for i, t in enumerate(c):
                    src.append(last if i == 0 else n + i - 1)
                    tok.append(t)
                select[s, at:at + len(c) - 1] = True
                n += len(c) - 1
                at += len(c)
                lengths.append(len(c))
        logits, _ = self(idx, pos, mask[:, None], select=select.to(device))  # (n, V) in row-major order
        src, tok = torch.tensor(src, device=device), torch.tensor(tok, device=device)
        if allowed is None:
            lp = F.log_softmax(logits.float() / temperature, -1)[src, tok]  # one per continuation token
        else:  # each token over its own prefix's choices: one row of logits per continuation token
            ok = trie_mask([t for t, cs in zip(allowed, conts) for _ in cs], [c for cs in conts for c in cs],
                           logits.shape[-1])
            lp = log_softmax_over(logits[src].float() / temperature, ok).gather(1, tok[:, None])[:, 0]
        sums = torch.stack([x.sum() for x in lp.cpu().split(lengths)])
        return list(sums.split([len(cs) for cs in conts]))

    def value_at(self, idx, pos):
        """The value head at one position of each row: idx (B, T), pos (B,) long -> (B,) fp32. Read at an
        action's last token it has seen the whole action: a score of (state, action) (prm.py's supervised
        reward model). The language-model head is skipped."""
        _, values = self(idx, select=torch.zeros_like(idx, dtype=torch.bool))
        return values.gather(1, pos[:, None].to(values.device)).squeeze(1)

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, greedy=False, top_k=None,
                 stop_id=None, use_cache=True, generator=None, stats_topk=0, allowed=None):
        """Sample an action after each prompt (list of token lists, any lengths). Each row stops at
        stop_id (kept as its last token) or after max_new_tokens. Returns, per row, the action tokens,
        their fp32 log-probs at `temperature` over the FULL distribution (top_k only narrows what is
        sampled, so these match evaluate()), and the values V(state before each token), as CPU tensors.
        stats_topk > 0 adds a fourth list: per row dict(entropy (n,), topk (n, stats_topk) log-probs).
        Prompts are LEFT-padded: one shared write position in the cache; a key-padding mask and
        position ids counted from the mask (never from token ids) make the padding invisible.
        allowed, optional: per row a dict {tokens so far (tuple): the token ids that may come next} (a prefix
        trie of the row's available actions): constrained decoding, the distribution renormalised over those
        tokens, and the log-probs are the renormalised ones (evaluate(..., allowed) gives the same)."""
        assert temperature > 0, "use greedy=True for argmax decoding; temperature scales the log-probs"
        assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
        device = self.lm_head.weight.device
        B, L = len(prompts), max(len(p) for p in prompts)
        T_max = L + max_new_tokens
        if T_max > self.config.block_size:
            raise ValueError(f"prompt of {L} tokens + {max_new_tokens} new tokens > block_size "
                             f"{self.config.block_size}")
        idx = torch.zeros(B, T_max, dtype=torch.long)  # the id under padding is irrelevant
        valid = torch.zeros(B, T_max, dtype=torch.bool)  # True on real tokens
        for b, p in enumerate(prompts):
            idx[b, L - len(p):L] = torch.tensor(p, dtype=torch.long)
            valid[b, L - len(p):L] = True
        idx, valid = idx.to(device), valid.to(device)
        lengths = valid.sum(1)  # (B,) prompt lengths = position id of the first new token
        eye = torch.eye(T_max, dtype=torch.bool, device=device)
        causal = torch.tril(torch.ones(T_max, T_max, dtype=torch.bool, device=device))

        def mask_for(t0, t1):  # queries t0..t1-1 over keys 0..t1-1: (B, 1, t1-t0, t1) bool
            m = causal[t0:t1, :t1] & valid[:, None, None, :t1]
            return m | eye[t0:t1, :t1]  # a padding query sees itself: no all-masked row, no NaN

        cache = self.new_cache(B, T_max) if use_cache else None
        out_tok, out_lp, out_v, out_ent, out_top = [], [], [], [], []
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for i in range(max_new_tokens):
            t = L + i  # where the next token goes
            if cache is None or i == 0:  # full forward over everything so far (prefill if cached)
                pos = (valid[:, :t].cumsum(1) - 1).clamp(min=0)  # (B, t)
                logits, values = self(idx[:, :t], pos, mask_for(0, t), cache, last_only=True)
            else:  # feed only the newest token
                logits, values = self(idx[:, t - 1:t], (lengths + i - 1)[:, None], mask_for(t - 1, t),
                                      cache)
            logits = logits[:, -1].float() / temperature  # (B, V)
            if allowed is not None:  # each live row continues its prefix along its trie (a done row: anything)
                ok = torch.ones_like(logits, dtype=torch.bool)
                for b in range(B):
                    nxt = None if done[b] else allowed[b].get(tuple(idx[b, L:t].tolist()))
                    if nxt:
                        ok[b] = False
                        ok[b, nxt] = True
                logits = logits.masked_fill(~ok, float("-inf"))
            logp = F.log_softmax(logits, dim=-1)
            if greedy:
                nxt = logits.argmax(-1)
            else:
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                # inverse-CDF sampling, one uniform per row (torch.multinomial draws V numbers per row,
                # the slowest part of a decode step on a CPU). u lies in (0, total], so the first
                # index with cdf >= u always has positive probability.
                cdf = F.softmax(logits, dim=-1).cumsum(-1)  # (B, V)
                u = (1 - torch.rand(B, 1, device=device, generator=generator)) * cdf[:, -1:]
                nxt = torch.searchsorted(cdf, u).squeeze(1)  # (B,)
            out_tok.append(nxt)
            out_lp.append(logp.gather(1, nxt[:, None]).squeeze(1))
            out_v.append(values[:, -1])
            if stats_topk:  # what the confidence baselines need, free while the logits are here
                out_ent.append(entropy(logp))
                out_top.append(top_logprobs(logp, stats_topk))
            idx[:, t], valid[:, t] = nxt, True
            if stop_id is not None:
                done |= nxt == stop_id
            if bool(done.all()):
                break
        tok, lp, v = (torch.stack(x, 1).cpu() for x in (out_tok, out_lp, out_v))  # (B, n_new)
        actions, logprobs, values = [], [], []
        for b in range(B):
            row = tok[b].tolist()
            n = row.index(stop_id) + 1 if stop_id in row else len(row)
            actions.append(row[:n])
            logprobs.append(lp[b, :n])
            values.append(v[b, :n])
        if not stats_topk:
            return actions, logprobs, values
        ent, top = torch.stack(out_ent, 1).cpu(), torch.stack(out_top, 1).cpu()  # (B, n_new), (B, n_new, k)
        stats = [dict(entropy=ent[b, :len(a)], topk=top[b, :len(a)]) for b, a in enumerate(actions)]
        return actions, logprobs, values, stats


class RatioScaled(GPT):
    """A policy moved `scale` times as far from its reference along its own log-ratio, token by token:
        log pi_s(t | x) = (1 - scale) log pi_ref(t | x) + scale log pi(t | x) - log Z(x),
    that is, logits (1 - scale) * ref + scale * policy (the softmax takes each row's constant out). Scale 1 is the
    policy, 0 the reference. If log pi/pi_ref were A / beta' at every token, pi_s would be pi_ref exp(scale * A /
    beta') / Z: the same advantages, a smaller beta. Values are the policy's. For acting and scoring only
    (generate, evaluate, continuation_logprobs), at two forward passes per call; nothing trains it."""
    n_nets = 2

    def __init__(self, policy, ref, scale):
        nn.Module.__init__(self)
        self.config, self.policy, self.ref, self.scale = policy.config, policy, ref, float(scale)
        self.lm_head = policy.lm_head  # where generate() and continuation_logprobs() look for the device

    def new_cache(self, B, T_max):
        return self.policy.new_cache(B, T_max), self.ref.new_cache(B, T_max)

    def forward(self, idx, pos=None, attn_mask=None, cache=None, last_only=False, select=None):
        cp, cr = cache if cache is not None else (None, None)
        logits, values = self.policy(idx, pos, attn_mask, cp, last_only, select)
        ref_logits, _ = self.ref(idx, pos, attn_mask, cr, last_only, select)
        return (1.0 - self.scale) * ref_logits.float() + self.scale * logits.float(), values


def trie_mask(tries, seqs, vocab_size):
    """(N, V) bool: at each token of each sequence, in order, the tokens its trie allows after its prefix
    (N = all their tokens). A token outside its trie raises ValueError."""
    mask, n = torch.zeros(sum(map(len, seqs)), vocab_size, dtype=torch.bool), 0
    for trie, seq in zip(tries, seqs):
        for i, tok in enumerate(seq):
            nxt = trie.get(tuple(seq[:i]), ())
            if tok not in nxt:
                raise ValueError(f"token {tok} after {list(seq[:i])} is not in the trie: not an available action")
            mask[n, nxt] = True
            n += 1
    return mask


def log_softmax_over(logits, allowed=None):
    """log_softmax over the last dimension, over the allowed entries only when a bool mask is given (the others
    get -inf: probability 0)."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    return F.log_softmax(logits, dim=-1)


def entropy(logp):
    """Entropy of each distribution of log-probs (last dimension); entries at -inf (probability 0) add 0."""
    return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)


def kl_div(logp, logq):
    """KL(p || q) of each pair of distributions of log-probs (last dimension). Tokens that p cannot produce add 0
    (constrained decoding gives both networks the same allowed tokens, so q > 0 wherever p > 0)."""
    p = logp.exp()
    return (p * torch.where(p > 0, logp - logq, torch.zeros_like(p))).sum(-1)  # no nan where both are -inf


def top_logprobs(logp, k, floor=-100.0):
    """The k largest log-probs of each distribution. Under constrained decoding fewer than k tokens may be
    possible: the impossible ones (-inf) count at `floor` nats, so that the confidence baselines stay finite."""
    return logp.topk(k, dim=-1).values.nan_to_num(neginf=floor)


def pack(prompts, actions, pad_id):
    """Right-padded rows prompt + action -> idx (B, T) long, action_mask (B, T) float where
    1 = an action token (the policy produced it, the stop token included), 0 = prompt or padding."""
    T = max(len(p) + len(a) for p, a in zip(prompts, actions))
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    action_mask = torch.zeros(len(prompts), T)
    for b, (p, a) in enumerate(zip(prompts, actions)):
        idx[b, :len(p) + len(a)] = torch.tensor(list(p) + list(a), dtype=torch.long)
        action_mask[b, len(p):len(p) + len(a)] = 1.0
    return idx, action_mask

# -----------------------------------------------------------------------------
# training steps and devices


def copy_net(net, state=None):
    """A trainable copy of net on its device, with net's weights or the given state_dict."""
    new = GPT(net.config).to(next(net.parameters()).device)
    new.load_state_dict(state or net.state_dict())
    return new.train()


def gradient_step(opt, net, loss, max_grad_norm, what, hint="lower the learning rate"):
    """One optimizer step on loss, its gradient norm clipped; a non-finite loss stops the run (check_finite)."""
    check_finite(loss, what, hint)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
    opt.step()


def check_finite(x, what, hint="lower the learning rate"):
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{what} is {x.item() if x.numel() == 1 else 'not finite'}: stopping ({hint})")


def get_device(name="auto"):
    """auto: cuda, then mps, then cpu. A named device must exist here (ValueError otherwise)."""
    if name != "auto":
        try:
            torch.empty(0, device=name)
        except (RuntimeError, AssertionError):
            raise ValueError(f"device {name!r} is not available here (valid: auto, cpu, cuda, cuda:N, mps, "
                             f"where the machine has one)") from None
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast_ctx(device):
    """bf16 autocast on CUDA that supports it; full fp32 everywhere else (CPU bf16 is slow)."""
    if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
