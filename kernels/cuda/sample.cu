// Each row's next token, chosen on the device: one block per row. Reference and the exact
// definition of what is drawn: kernels/src/cpu/sample.rs. Selection runs on integer
// weights (fixed point, WEIGHT_BITS), so its result does not depend on the order of
// additions; thresholds are found by radix selection over the logits' order keys (4 passes of
// 8 bits), never by sorting the vocabulary.

#include <stdint.h>

#define THREADS 256
#define WEIGHT_BITS 40
#define NO_MASK 0xFFFFFFFFu

// Larger float, larger key (for finite values).
__device__ __forceinline__ uint32_t order_key(float x) {
    uint32_t b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ bool allowed(const uint32_t* mask, uint32_t i) {
    return mask == nullptr || ((mask[i >> 5] >> (i & 31u)) & 1u);
}

__device__ __forceinline__ uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ uint32_t draw_bits(uint64_t seed, uint64_t draw) {
    return (uint32_t)(mix(seed ^ mix(draw + 0x9E3779B97F4A7C15ull)) >> 40);
}

__device__ float block_max(float v, float* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_sum(float v, float* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ unsigned long long block_sum_u64(unsigned long long v, unsigned long long* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    unsigned long long r = sh[0];
    __syncthreads();
    return r;
}

// The largest value and, among equal ones, the smallest index (index UINT32_MAX: none).
__device__ void block_argmax(float& v, uint32_t& idx, float* shv, uint32_t* shi) {
    shv[threadIdx.x] = v;
    shi[threadIdx.x] = idx;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = shv[threadIdx.x + s];
            uint32_t oi = shi[threadIdx.x + s];
            uint32_t mi = shi[threadIdx.x];
            if (oi != 0xFFFFFFFFu &&
                (mi == 0xFFFFFFFFu || ov > shv[threadIdx.x] ||
                 (ov == shv[threadIdx.x] && oi < mi))) {
                shv[threadIdx.x] = ov;
                shi[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    v = shv[0];
    idx = shi[0];
    __syncthreads();
}

struct Row {
    const float* logits;
    const uint32_t* mask;
    uint32_t vocab;
    float max;
    float temperature;
};

// A candidate's weight (0: not a candidate).
__device__ __forceinline__ unsigned long long weight(const Row& r, uint32_t i) {
    float l = r.logits[i];
    if (!allowed(r.mask, i) || !isfinite(l)) return 0;
    float w = __expf((l - r.max) / r.temperature);
    return (unsigned long long)(w * (float)(1ull << WEIGHT_BITS));
}

// The largest key `t` (over candidates with key >= floor) such that the count (by_mass
// false) or the weight (true) of candidates with key >= t reaches `need`.
__device__ uint32_t radix_select(const Row& r, uint32_t floor, unsigned long long need,
                                 bool by_mass, unsigned long long* hist, uint32_t* shared_prefix) {
    uint32_t prefix = 0, high = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += THREADS) hist[b] = 0;
        __syncthreads();
        for (uint32_t i = threadIdx.x; i < r.vocab; i += THREADS) {
            unsigned long long w = weight(r, i);
            if (w == 0) continue;
            uint32_t key = order_key(r.logits[i]);
            if (key < floor || (key & high) != prefix) continue;
            atomicAdd(&hist[(key >> shift) & 255u], by_mass ? w : 1ull);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long above = 0;
            int chosen = 0;
            for (int b = 255; b >= 0; --b) {
                if (above + hist[b] >= need) {
                    chosen = b;
                    break;
                }
                above += hist[b];
            }
            need -= above;
            *shared_prefix = prefix | ((uint32_t)chosen << shift);
            hist[256] = need;
        }
        __syncthreads();
        prefix = *shared_prefix;
        need = hist[256];
        high |= 255u << shift;
        __syncthreads();
    }
    return prefix;
}

// Kept weight of candidates with key >= floor.
__device__ unsigned long long kept_total(const Row& r, uint32_t floor, unsigned long long* sh) {
    unsigned long long s = 0;
    for (uint32_t i = threadIdx.x; i < r.vocab; i += THREADS) {
        unsigned long long w = weight(r, i);
        if (w != 0 && order_key(r.logits[i]) >= floor) s += w;
    }
    return block_sum_u64(s, sh);
}

// raw, edited: [rows][vocab] f32 (edited may be raw). params: [rows][8] u32 (see
// RowSampling::packed). masks: [mask rows][mask_words] u32. out: [rows][3] (token as bits,
// logprob, log_norm).
extern "C" __global__ void migserve_sample_rows(const float* raw, const float* edited,
                                                const uint32_t* params, const uint32_t* masks,
                                                uint32_t vocab, uint32_t mask_words,
                                                float* out) {
    __shared__ float shf[THREADS];
    __shared__ uint32_t shi[THREADS];
    __shared__ unsigned long long shu[THREADS];
    __shared__ unsigned long long hist[257];
    __shared__ uint32_t shared_prefix;
    __shared__ uint32_t chosen;

    const size_t row = blockIdx.x;
    const float* raw_row = raw + row * vocab;
    const uint32_t* p = params + row * 8;
    const uint32_t mask_row = p[7];
    Row r;
    r.logits = edited + row * vocab;
    r.mask = mask_row == NO_MASK ? nullptr : masks + (size_t)mask_row * mask_words;
    r.vocab = vocab;
    r.temperature = __uint_as_float(p[0]);
    const uint32_t top_k = p[1];
    const float top_p = __uint_as_float(p[2]);
    const uint64_t seed = (uint64_t)p[3] | ((uint64_t)p[4] << 32);
    const uint64_t draw = (uint64_t)p[5] | ((uint64_t)p[6] << 32);

    // The raw row's log-softmax normalizer.
    float m = -INFINITY;
    for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) m = fmaxf(m, raw_row[i]);
    m = block_max(m, shf);
    float s = 0.0f;
    if (isfinite(m))
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) s += __expf(raw_row[i] - m);
    s = block_sum(s, shf);
    const float log_norm = isfinite(m) ? m + logf(s) : m;

    // The most likely allowed finite token (first on ties).
    float best = -INFINITY;
    uint32_t best_i = 0xFFFFFFFFu;
    uint32_t first_allowed = 0xFFFFFFFFu;
    for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
        if (!allowed(r.mask, i)) continue;
        if (first_allowed == 0xFFFFFFFFu) first_allowed = i;
        float l = r.logits[i];
        if (isfinite(l) && (best_i == 0xFFFFFFFFu || l > best)) {
            best = l;
            best_i = i;
        }
    }
    block_argmax(best, best_i, shf, shi);
    // Smallest allowed index (for a row with nothing finite allowed).
    shi[threadIdx.x] = first_allowed;
    __syncthreads();
    for (int st = THREADS / 2; st > 0; st >>= 1) {
        if (threadIdx.x < st) shi[threadIdx.x] = min(shi[threadIdx.x], shi[threadIdx.x + st]);
        __syncthreads();
    }
    first_allowed = shi[0];
    __syncthreads();

    uint32_t token;
    const bool greedy = r.temperature < 1e-5f || top_k == 1;
    if (best_i == 0xFFFFFFFFu) {
        token = first_allowed == 0xFFFFFFFFu ? 0 : first_allowed;
    } else if (greedy) {
        token = best_i;
    } else {
        r.max = best;
        // Candidates, then the top-k cut.
        unsigned long long count = 0;
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) count += weight(r, i) != 0;
        count = block_sum_u64(count, shu);
        uint32_t floor = 0;
        if (top_k > 0 && top_k < count)
            floor = radix_select(r, 0, top_k, false, hist, &shared_prefix);
        if (top_p < 1.0f) {
            unsigned long long total = kept_total(r, floor, shu);
            unsigned long long need = (unsigned long long)ceil((double)top_p * (double)total);
            need = need < 1 ? 1 : (need > total ? total : need);
            uint32_t cut = radix_select(r, floor, need, true, hist, &shared_prefix);
            floor = cut > floor ? cut : floor;
        }
        const unsigned long long total = kept_total(r, floor, shu);
        const uint32_t bits = draw_bits(seed, draw);
        const unsigned long long target =
            (total >> 24) * bits + (((total & 0xFFFFFFull) * bits) >> 24);
        // Each thread walks a contiguous span of ids, so spans in thread order are id order.
        const uint32_t span = (vocab + THREADS - 1) / THREADS;
        const uint32_t begin = min(vocab, threadIdx.x * span);
        const uint32_t end = min(vocab, begin + span);
        unsigned long long mine = 0;
        for (uint32_t i = begin; i < end; ++i) {
            unsigned long long w = weight(r, i);
            if (w != 0 && order_key(r.logits[i]) >= floor) mine += w;
        }
        shu[threadIdx.x] = mine;
        if (threadIdx.x == 0) chosen = best_i;
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long run = 0;
            for (int t = 0; t < THREADS; ++t) {
                unsigned long long v = shu[t];
                shu[t] = run;
                run += v;
            }
        }
        __syncthreads();
        const unsigned long long before = shu[threadIdx.x];
        if (mine != 0 && before <= target && target < before + mine) {
            unsigned long long run = before;
            for (uint32_t i = begin; i < end; ++i) {
                unsigned long long w = weight(r, i);
                if (w == 0 || order_key(r.logits[i]) < floor) continue;
                run += w;
                if (run > target) {
                    chosen = i;
                    break;
                }
            }
        }
        __syncthreads();
        token = chosen;
    }
    if (threadIdx.x == 0) {
        float* o = out + row * 3;
        o[0] = __uint_as_float(token);
        o[1] = raw_row[token] - log_norm;
        o[2] = log_norm;
    }
}
