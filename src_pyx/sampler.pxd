# The sampler: one row of logits and one random coin in, one token id out.
#
# Semantics are Hugging Face's, applied in its order: repetition_penalty on the raw logits,
# then temperature, top_k, top_p, min_p, then a draw from what is left.  temperature == 0 is
# greedy (argmax after the penalty).  The draw is the inverse CDF of the kept tokens taken in
# id order at `coin` in [0, 1), so a fixed coin gives a fixed, testable token.
#
# Every token gets one weight, w = exp((score - top) / temperature) (the top token's is 1);
# truncation sets weights to 0.  Nothing is sorted in full: top_k and top_p select with
# partitioning passes, so a step costs O(vocab).  Only the caller's scratch is written.

from libc.math cimport INFINITY, isnan
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport qsort


cdef extern from "kernels.h" nogil:  # gates.h
    # out[i] = exp((x[i] - shift) * scale)  (AVX2 when the CPU has it)
    void exp_scaled "fl_exp_scaled"(int count, const float *x, float shift, float scale,
                                    float *out)


cdef struct SamplingParams:
    float temperature         # 0 = greedy
    int top_k                 # 0 = off
    float top_p               # 1 = off
    float min_p               # 0 = off
    float repetition_penalty  # 1 = off


cdef struct Candidate:
    float weight
    int id


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
                             const SamplingParams *p, float u, float *weight,
                             Candidate *cand) noexcept nogil:
    """Pick the next token from one row of logits (vocab,).

    seen: (vocab,) nonzero for ids already in the sequence (for repetition_penalty), or NULL.
    u: the coin in [0, 1).  weight (vocab,), cand (vocab,): scratch.
    Returns the token id, or -1 if the logits hold a NaN or +inf, or are all -inf.
    """
    cdef int i, n, best = 0, kept
    cdef float s, top = -INFINITY, pen = p.repetition_penalty, threshold
    cdef double total, acc

    # Repetition penalty (HF): seen logits are divided by it if positive, multiplied if not.
    for i in range(vocab):
        s = logits[i]
        if isnan(s) or s == INFINITY:
            return -1
        if seen != NULL and pen != 1.0 and seen[i]:
            s = s / pen if s > 0 else s * pen
        weight[i] = s
        if s > top:
            top = s
            best = i
    if top == -INFINITY:
        return -1
    if p.temperature == 0.0 or vocab == 1:
        return best

    exp_scaled(vocab, weight, top, 1.0 / p.temperature, weight)
    weight[best] = 1.0  # exactly, whatever exp's rounding: top_p's bound relies on it

    if 0 < p.top_k < vocab:
        # Keep weights >= the k-th largest, ties included (as torch.topk's threshold does).
        for i in range(vocab):
            cand[i].weight = weight[i]
            cand[i].id = i
        threshold = kth_largest(cand, vocab, p.top_k)
        for i in range(vocab):
            if weight[i] < threshold:
                weight[i] = 0.0

    if p.top_p < 1.0:
        # Tokens below (1 - top_p) / (n - 1) of the mass are never in the nucleus (together
        # they hold less than 1 - top_p, with the top token kept), so only the rest is searched.
        total = 0.0
        n = 0
        for i in range(vocab):
            if weight[i] > 0.0:
                total += weight[i]
                n += 1
        threshold = <float> ((1.0 - p.top_p) / (n - 1) * total) if n > 1 else 1.0
        if threshold > 1.0:
            threshold = 1.0
        n = 0
        for i in range(vocab):
            if weight[i] >= threshold and weight[i] > 0.0:
                cand[n].weight = weight[i]
                cand[n].id = i
                n += 1
        kept = nucleus(cand, n, p.top_p * total)
        for i in range(vocab):
            weight[i] = 0.0
        for i in range(kept):
            weight[cand[i].id] = cand[i].weight

    if p.min_p > 0.0:
        # Drop tokens less likely than min_p times the most likely one (whose weight is 1).
        for i in range(vocab):
            if weight[i] < p.min_p:
                weight[i] = 0.0

    # Inverse CDF over the kept tokens in id order.
    total = 0.0
    for i in range(vocab):
        total += weight[i]
    acc = 0.0
    threshold = u * total
    for i in range(vocab):
        if weight[i] > 0.0:
            acc += weight[i]
            best = i
            if acc > threshold:
                return i
    return best


cdef inline int by_weight_then_id(const void *a, const void *b) noexcept nogil:
    cdef const Candidate *x = <const Candidate *> a
    cdef const Candidate *y = <const Candidate *> b
    if x.weight != y.weight:
        return -1 if x.weight > y.weight else 1
    return x.id - y.id


cdef inline int nucleus(Candidate *cand, int n, double target) noexcept nogil:
    """top_p's kept count: with cand ordered by weight (descending, then id), the tokens whose
    preceding mass is below `target`.  Found by partitioning, not sorting (expected O(n));
    the kept candidates end up in cand[:result]."""
    cdef int lo = 0, hi = n, i, a, b, j
    cdef double acc = 0.0, above
    cdef float pivot
    cdef Candidate tmp
    while hi - lo > 16:
        pivot = median3(cand[lo].weight, cand[(lo + hi) // 2].weight, cand[hi - 1].weight)
        # Three-way partition of [lo, hi): > pivot in [lo, a), == in [a, b), < in [b, hi).
        a = lo
        b = lo
        j = hi
        while b < j:
            if cand[b].weight > pivot:
                tmp = cand[a]; cand[a] = cand[b]; cand[b] = tmp
                a += 1
                b += 1
            elif cand[b].weight < pivot:
                j -= 1
                tmp = cand[b]; cand[b] = cand[j]; cand[j] = tmp
            else:
                b += 1
        above = 0.0
        for i in range(lo, a):
            above += cand[i].weight
        if acc + above >= target:
            hi = a  # the nucleus ends inside the heavier part
            continue
        acc += above
        # Equal weights go in id order, as a full sort would put them.
        qsort(cand + a, b - a, sizeof(Candidate), by_weight_then_id)
        for i in range(a, b):
            if acc >= target:
                return i
            acc += cand[i].weight
        lo = b
    qsort(cand + lo, hi - lo, sizeof(Candidate), by_weight_then_id)
    for i in range(lo, hi):
        if acc >= target:
            return i
        acc += cand[i].weight
    return hi


cdef inline float median3(float a, float b, float c) noexcept nogil:
    if a > b:
        a, b = b, a
    if b > c:
        b = c
    return a if a > b else b


cdef inline float kth_largest(Candidate *cand, int n, int k) noexcept nogil:
    """The k-th largest weight (1-based) among cand[:n]; reorders cand (quickselect)."""
    cdef int lo = 0, hi = n - 1, i, j, target = k - 1
    cdef float pivot
    cdef Candidate tmp
    while lo < hi:
        pivot = cand[(lo + hi) // 2].weight
        i = lo
        j = hi
        while i <= j:
            while cand[i].weight > pivot:
                i += 1
            while cand[j].weight < pivot:
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
    return cand[target].weight
