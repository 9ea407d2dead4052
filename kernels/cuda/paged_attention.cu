// Paged KV cache kernels of migserve (bf16 cache, f32 accumulation).
//
// Cache layout per layer, as in the CPU reference (src/cpu/paged_attention.rs):
// [block][slot][kv_head][head_dim], i.e. rows of `n_kv_heads * head_dim` values, one row per
// cached position, row index = block * block_size + slot.
//
// The CPU reference implementations of both kernels are in src/cpu/: the GPU tests compare
// them on random inputs.

#include <cuda_bf16.h>
#include <stdint.h>

// Register tiles are sized for the models migserve serves: up to 8 query heads per KV head
// and head_dim up to 256 (8 values per lane). The host refuses larger shapes.
#define MAX_GROUP 8
#define MAX_PER_LANE 8
#define WARPS 4

// Writes the new keys and values of `rows` tokens into their cache rows.
// k, v: [rows][kv_row] (kv_row = n_kv_heads * head_dim); slots: [rows] destination row index.
// grid: (rows), block: any width; threads stride over kv_row.
extern "C" __global__ void migserve_kv_write_bf16(
    const __nv_bfloat16 *__restrict__ k,
    const __nv_bfloat16 *__restrict__ v,
    const uint32_t *__restrict__ slots,
    __nv_bfloat16 *__restrict__ key_cache,
    __nv_bfloat16 *__restrict__ value_cache,
    const uint32_t kv_row) {
    const uint32_t r = blockIdx.x;
    const size_t dst = (size_t)slots[r] * kv_row;
    const size_t src = (size_t)r * kv_row;
    for (uint32_t i = threadIdx.x; i < kv_row; i += blockDim.x) {
        key_cache[dst + i] = k[src + i];
        value_cache[dst + i] = v[src + i];
    }
}

// Attention of query rows against their sequences' cached keys and values.
//
// q, out: [rows][n_heads][head_dim]; q is pre-scaled by 1/sqrt(head_dim).
// row_seq[r]: the sequence of row r (index into block_tables);
// row_visible[r]: how many positions row r sees (0..visible), at least 1;
// window: sliding-window attention, row r sees only positions visible - window .. visible
// (0: no window);
// block_tables: [n_seqs][max_blocks] block ids.
// Grouped-query attention: query head h reads KV head h / group.
//
// grid: (rows, n_kv_heads), block: WARPS * 32 threads. Each block handles the `group` query
// heads that share one KV head, so every cached key and value row is read once for all of
// them. Warps take positions in turn; lanes split head_dim; each warp keeps a running
// (max, sum, weighted values) per head (online softmax), and the warps' partial results are
// merged through shared memory at the end.
extern "C" __global__ void migserve_paged_attention_bf16(
    const __nv_bfloat16 *__restrict__ q,
    const __nv_bfloat16 *__restrict__ key_cache,
    const __nv_bfloat16 *__restrict__ value_cache,
    const uint32_t *__restrict__ block_tables,
    const uint32_t *__restrict__ row_seq,
    const uint32_t *__restrict__ row_visible,
    __nv_bfloat16 *__restrict__ out,
    const uint32_t n_heads,
    const uint32_t n_kv_heads,
    const uint32_t head_dim,
    const uint32_t block_size,
    const uint32_t max_blocks,
    const uint32_t window) {
    const uint32_t r = blockIdx.x;
    const uint32_t kvh = blockIdx.y;
    const uint32_t group = n_heads / n_kv_heads;
    const uint32_t lane = threadIdx.x % 32;
    const uint32_t warp = threadIdx.x / 32;
    const uint32_t per_lane = (head_dim + 31) / 32;
    const uint32_t kv_row = n_kv_heads * head_dim;
    const uint32_t visible = row_visible[r];
    const uint32_t first = (window > 0 && visible > window) ? visible - window : 0;
    const uint32_t *table = block_tables + (size_t)row_seq[r] * max_blocks;

    // This lane's slice of each head's query: elements lane, lane + 32, ...
    float qv[MAX_GROUP][MAX_PER_LANE];
    float acc[MAX_GROUP][MAX_PER_LANE];
    float m[MAX_GROUP];
    float l[MAX_GROUP];
#pragma unroll
    for (uint32_t g = 0; g < MAX_GROUP; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (uint32_t e = 0; e < MAX_PER_LANE; ++e) {
            const uint32_t d = lane + 32 * e;
            const bool live = g < group && e < per_lane && d < head_dim;
            const size_t qi = ((size_t)r * n_heads + kvh * group + g) * head_dim + d;
            qv[g][e] = live ? __bfloat162float(q[qi]) : 0.0f;
            acc[g][e] = 0.0f;
        }
    }

    for (uint32_t p = first + warp; p < visible; p += WARPS) {
        const size_t base =
            ((size_t)table[p / block_size] * block_size + p % block_size) * kv_row +
            (size_t)kvh * head_dim;
        float kv[MAX_PER_LANE];
#pragma unroll
        for (uint32_t e = 0; e < MAX_PER_LANE; ++e) {
            const uint32_t d = lane + 32 * e;
            kv[e] = (e < per_lane && d < head_dim) ? __bfloat162float(key_cache[base + d]) : 0.0f;
        }
        float score[MAX_GROUP];
#pragma unroll
        for (uint32_t g = 0; g < MAX_GROUP; ++g) {
            score[g] = 0.0f;
            if (g >= group) continue;
            float s = 0.0f;
#pragma unroll
            for (uint32_t e = 0; e < MAX_PER_LANE; ++e) s += qv[g][e] * kv[e];
#pragma unroll
            for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
            score[g] = s;
        }
#pragma unroll
        for (uint32_t e = 0; e < MAX_PER_LANE; ++e) {
            const uint32_t d = lane + 32 * e;
            kv[e] = (e < per_lane && d < head_dim) ? __bfloat162float(value_cache[base + d]) : 0.0f;
        }
#pragma unroll
        for (uint32_t g = 0; g < MAX_GROUP; ++g) {
            if (g >= group) break;
            const float m_new = fmaxf(m[g], score[g]);
            const float scale_old = __expf(m[g] - m_new);
            const float w = __expf(score[g] - m_new);
            l[g] = l[g] * scale_old + w;
#pragma unroll
            for (uint32_t e = 0; e < MAX_PER_LANE; ++e) acc[g][e] = acc[g][e] * scale_old + w * kv[e];
            m[g] = m_new;
        }
    }

    // Merge the warps: each publishes (m, l) per head and its weighted values.
    __shared__ float s_m[WARPS][MAX_GROUP];
    __shared__ float s_l[WARPS][MAX_GROUP];
    extern __shared__ float s_acc[];  // [WARPS][group][head_dim]
    if (lane == 0) {
#pragma unroll
        for (uint32_t g = 0; g < MAX_GROUP; ++g) {
            s_m[warp][g] = m[g];
            s_l[warp][g] = l[g];
        }
    }
#pragma unroll
    for (uint32_t g = 0; g < MAX_GROUP; ++g) {
        if (g >= group) break;
#pragma unroll
        for (uint32_t e = 0; e < MAX_PER_LANE; ++e) {
            const uint32_t d = lane + 32 * e;
            if (e < per_lane && d < head_dim) s_acc[(warp * group + g) * head_dim + d] = acc[g][e];
        }
    }
    __syncthreads();
    // Threads stride over (head, dim) of the output.
    for (uint32_t i = threadIdx.x; i < group * head_dim; i += blockDim.x) {
        const uint32_t g = i / head_dim;
        const uint32_t d = i % head_dim;
        float m_all = -INFINITY;
        for (uint32_t w = 0; w < WARPS; ++w) m_all = fmaxf(m_all, s_m[w][g]);
        float sum = 0.0f;
        float val = 0.0f;
        for (uint32_t w = 0; w < WARPS; ++w) {
            // A warp that saw no position has m = -inf and contributes nothing.
            if (s_m[w][g] == -INFINITY) continue;
            const float f = __expf(s_m[w][g] - m_all);
            sum += s_l[w][g] * f;
            val += s_acc[(w * group + g) * head_dim + d] * f;
        }
        const size_t oi = ((size_t)r * n_heads + kvh * group + g) * head_dim + d;
        out[oi] = __float2bfloat16(sum > 0.0f ? val / sum : 0.0f);
    }
}
