# The sampler: one row of logits and one random coin in, one token id out.
#
# Semantics are Hugging Face's, applied in its order: repetition_penalty on the raw logits,
# then temperature, top_k, top_p, min_p, then a draw from what is left.  temperature == 0 is
# greedy (argmax after the penalty).  The draw is the inverse CDF of the kept tokens taken in
# id order at `coin` in [0, 1), so a fixed coin gives a fixed, testable token.
#
# Only kernel-internal scratch is written; `logits` is read only.

from libc.math cimport expf, logf, INFINITY
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport qsort


cdef struct SamplingParams:
    float temperature         # 0 = greedy
    int top_k                 # 0 = off
    float top_p               # 1 = off
    float min_p               # 0 = off
    float repetition_penalty  # 1 = off


cdef struct Candidate:
    float score
    int id


cdef inline int by_score_descending(const void *a, const void *b) noexcept nogil:
    cdef float x = (<const Candidate *> a).score
    cdef float y = (<const Candidate *> b).score
    if x > y:
        return -1
    if x < y:
        return 1
    return (<const Candidate *> a).id - (<const Candidate *> b).id


# ---- random coins: counter-based, so a sequence's draws depend on (seed, stream, step) only --

cdef inline uint64_t splitmix64(uint64_t x) noexcept nogil:
    x += 0x9E3779B97F4A7C15ULL
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline float coin(uint64_t seed, uint64_t stream, uint64_t step) noexcept nogil:
    """A uniform float in [0, 1): 24 random bits of hash(seed, stream, step)."""
    cdef uint64_t x = splitmix64(splitmix64(seed ^ splitmix64(stream)) + step)
    return (x >> 40) * (1.0 / 16777216.0)


# ---- the sampler ------------------------------------------------------------------------------

cdef inline int sample_token(const float *logits, int vocab, const uint8_t *seen,
                             const SamplingParams *p, float u, float *scores,
                             Candidate *cand) noexcept nogil:
    """Pick the next token from one row of logits (vocab,).

    seen: (vocab,) nonzero for ids already in the sequence (for repetition_penalty), or NULL.
    u: the coin in [0, 1).  scores (vocab,), cand (vocab,): scratch.
    Returns the token id, or -1 if the logits hold a NaN or +inf, or are all -inf (when
    sampling).
    """
    cdef int i, n, best = 0, k
    cdef float s, top = -INFINITY, threshold, total, acc, cutoff
    cdef float pen = p.repetition_penalty

    # Repetition penalty (HF): seen logits are divided by it if positive, multiplied if not.
    for i in range(vocab):
        s = logits[i]
        if s != s:
            return -1
        if seen != NULL and pen != 1.0 and seen[i]:
            s = s / pen if s > 0 else s * pen
        scores[i] = s
        if s > top:
            top = s
            best = i
    if p.temperature == 0.0 or vocab == 1:
        return best

    # Temperature, then everything relative to the top score: exp(score - top) in (0, 1].
    n = 0
    for i in range(vocab):
        s = (scores[i] - top) / p.temperature
        if s > -INFINITY:
            cand[n].score = s
            cand[n].id = i
            n += 1

    if n == 0:  # every logit -inf, or one +inf: nothing to sample from
        return -1

    k = p.top_k
    if 0 < k < n:
        # Keep scores >= the k-th largest, ties included (as torch.topk's threshold does).
        threshold = kth_largest(cand, n, k)
        n = keep_at_least(cand, n, threshold)

    if p.top_p < 1.0:
        # Tokens whose probability is below (1 - top_p) / (n - 1) are never in the nucleus
        # (together they hold less than 1 - top_p), so only the rest is sorted.
        total = 0.0
        for i in range(n):
            total += expf(cand[i].score)
        if n > 1:
            # The top token (score 0) always stays: the bound holds only if it does.
            cutoff = logf((1.0 - p.top_p) / (n - 1) * total)
            n = keep_at_least(cand, n, cutoff if cutoff < 0.0 else 0.0)
        qsort(cand, n, sizeof(Candidate), by_score_descending)
        # Keep a token while the mass of the tokens above it is below top_p.
        acc = 0.0
        for i in range(n):
            if acc >= p.top_p * total:
                n = i
                break
            acc += expf(cand[i].score)

    if p.min_p > 0.0:
        # Drop tokens less likely than min_p times the most likely kept one.
        top = -INFINITY
        for i in range(n):
            if cand[i].score > top:
                top = cand[i].score
        n = keep_at_least(cand, n, top + logf(p.min_p))

    # Inverse CDF over the kept tokens in id order.
    qsort(cand, n, sizeof(Candidate), by_id)
    total = 0.0
    for i in range(n):
        total += expf(cand[i].score)
    threshold = u * total
    acc = 0.0
    for i in range(n):
        acc += expf(cand[i].score)
        if acc > threshold:
            return cand[i].id
    return cand[n - 1].id


cdef inline int by_id(const void *a, const void *b) noexcept nogil:
    return (<const Candidate *> a).id - (<const Candidate *> b).id


cdef inline int keep_at_least(Candidate *cand, int n, float threshold) noexcept nogil:
    """Move the candidates with score >= threshold to the front; return how many."""
    cdef int i, m = 0
    for i in range(n):
        if cand[i].score >= threshold:
            cand[m] = cand[i]
            m += 1
    return m


cdef inline float kth_largest(Candidate *cand, int n, int k) noexcept nogil:
    """The k-th largest score (1-based) among cand[:n]; reorders cand (quickselect)."""
    cdef int lo = 0, hi = n - 1, i, j, target = k - 1
    cdef float pivot
    cdef Candidate tmp
    while lo < hi:
        pivot = cand[(lo + hi) // 2].score
        i = lo
        j = hi
        while i <= j:
            while cand[i].score > pivot:
                i += 1
            while cand[j].score < pivot:
                j -= 1
            if i <= j:
                tmp = cand[i]
                cand[i] = cand[j]
                cand[j] = tmp
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return cand[target].score
