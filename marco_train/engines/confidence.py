"""The v1 confidence value of a generated token, from the RAW log-probabilities.

    c_i = exp(lp(t_i)) / sum_{k=1..5} exp(lp(t_k))

lp is the log-softmax of the model's logits at temperature 1, before temperature / top-p / top-k, so a
confidence means the same on every engine and at every sampling temperature. t_1..t_5 are the five most
likely tokens at that position and t_i is the token actually sampled.

Sampled token outside the top 5 (possible with temperature >= 1 or top-k > 5): the numerator is still the
sampled token's own probability and the denominator stays the top-5 mass, so c_i = p(t_i) / sum(top-5 p),
which is below 1/5 (p(t_i) is at most the 5th largest probability). We do not widen the denominator to
include t_i: any engine that reports the sampled token's log-prob and the top-5 log-probs (vLLM with
`logprobs=5` does) computes the same number.

A node's confidence is the mean of c_i over the tokens the model generated for it (prefill text has none);
a path's running confidence is the mean over all tokens generated along it (token-weighted).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

TOP_K = 5


def token_confidence(sampled_logprob, top_logprobs):
    """c_i from the sampled token's raw log-prob and the top-5 raw log-probs (floats, or tensors [..] / [.., 5])."""
    if isinstance(sampled_logprob, (int, float)):
        top = max(top_logprobs)
        return math.exp(sampled_logprob - top) / sum(math.exp(x - top) for x in top_logprobs)
    import torch

    return torch.exp(sampled_logprob - torch.logsumexp(top_logprobs, dim=-1))


def step_confidence(logits, sampled):
    """Vectorised over a batch, on logits the engine already has: (c [B], sampled lp [B], top-5 lp [B, 5], ids [B, 5]).

    logits: raw model logits [B, V] (no temperature applied); sampled: token ids [B].
    """
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top_lp, top_ids = logprobs.topk(TOP_K, dim=-1)
    sampled_lp = logprobs.gather(1, sampled[:, None]).squeeze(1)
    return token_confidence(sampled_lp, top_lp), sampled_lp, top_lp, top_ids


def mean_confidence(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if len(values) else None
