// Incremental (KV-cache) decoding: RoPE at explicit positions with the cache write, and one
// query per new token over its row's cached keys with the ITI head shift fused. fp32 throughout
// (decode is memory-bound: no tensor cores), 1-D blocks, no atomics: deterministic.
//
// CPU references: src/backend/cpu/decode.rs `kv_append`, `attention_decode`.
//
// Layouts (all row-major, caller-owned):
//   qkv    [n, 3D]                  new tokens' q ‖ k ‖ v, D = H·dh, head hh at hh·dh of a third
//   kc, vc [rows, H, t_max, dh]     one layer's key / value cache: (row, hh, pos) starts at
//                                   ((row·H + hh)·t_max + pos)·dh
//   meta   [n, 3] u32               per token: row, pos (its position in that row), shifted flag
//   table  [t_max, dh/2] cos, then [t_max, dh/2] sin (crate::model::transformer::rope_table)
//   z      [n, H, dh]               attention output (hook_z), shift [H·dh] (may be null)
// The host checks every (row, pos) of meta against the cache shape before a launch.
#include "common.cuh"

#define DEC_THREADS 256

// ---- kv_append ----
// One thread per (token i, head hh, pair e < dh/2), grid-stride, e fastest. With p = pos(i),
// c = cos[p, e], s = sin[p, e], for x = q and x = k of head hh (rotate-half):
//   x[e]' = x[e]·c − x[e + dh/2]·s,   x[e + dh/2]' = x[e + dh/2]·c + x[e]·s   (in place in qkv)
// then kc[row, hh, p, e | e + dh/2] = rotated k, vc[row, hh, p, e | e + dh/2] = v.
extern "C" __global__ void __launch_bounds__(DEC_THREADS)
kv_append(float* __restrict__ qkv, float* __restrict__ kc, float* __restrict__ vc,
          const float* __restrict__ table, const unsigned* __restrict__ meta, unsigned n,
          unsigned h, unsigned dh, unsigned t_max) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    const unsigned half = dh / 2;
    const unsigned long long d = (unsigned long long)h * dh;
    const unsigned long long per_token = (unsigned long long)h * half;
    for (unsigned long long k = tid; k < n * per_token; k += stride) {
        const unsigned long long i = k / per_token;
        const unsigned rem = (unsigned)(k - i * per_token);
        const unsigned hh = rem / half;
        const unsigned e = rem - hh * half;
        const unsigned row = meta[3 * i], pos = meta[3 * i + 1];
        const float c = table[(size_t)pos * half + e];
        const float s = table[(size_t)t_max * half + (size_t)pos * half + e];
        float* q = qkv + i * 3 * d + (size_t)hh * dh;
        float* kx = q + d;
        const float* vx = q + 2 * d;
        const float q1 = q[e], q2 = q[e + half];
        q[e] = q1 * c - q2 * s;
        q[e + half] = q2 * c + q1 * s;
        const float k1 = kx[e], k2 = kx[e + half];
        const float r1 = k1 * c - k2 * s, r2 = k2 * c + k1 * s;
        kx[e] = r1;
        kx[e + half] = r2;
        const size_t at = (((size_t)row * h + hh) * t_max + pos) * dh;
        kc[at + e] = r1;
        kc[at + e + half] = r2;
        vc[at + e] = vx[e];
        vc[at + e + half] = vx[e + half];
    }
}

// ---- attention_decode ----
// One block of DEC_THREADS (8 warps) per (token i, head hh): blockIdx.x = i·H + hh. With q the
// rotated q of head hh of token i, row r and position p from meta:
//   z[i, hh, :] = Σ_{j≤p} softmax_j(q·K[r, hh, j]·scale) V[r, hh, j]   (+ shift[hh·dh..] if flagged)
// Warp w walks keys j = w, w + 8, ... with an online softmax: lane owns columns
// c = lane + 32·t (t < R, c < dh; R = ceil(dh/32) rounded up to 1, 2, 4, 8), the score is a
// butterfly warp sum, then per key  m' = max(m, s), l = l·e^(m − m') + e^(s − m'),
// acc = acc·e^(m − m') + e^(s − m')·v_j. The 8 partial states are merged in warp order through
// shared memory: M = max_w m_w, out = Σ_w acc_w·e^(m_w − M) / Σ_w l_w·e^(m_w − M). Every sum has
// a fixed order: the same inputs give the same bits on every run.
#define DEC_WARPS (DEC_THREADS / 32)
template <int R>
__device__ __forceinline__ void attention_decode_impl(
    float* __restrict__ z, const float* __restrict__ qkv, const float* __restrict__ kc,
    const float* __restrict__ vc, const unsigned* __restrict__ meta,
    const float* __restrict__ shift, unsigned h, unsigned dh, unsigned t_max, float scale) {
    __shared__ float s_m[DEC_WARPS], s_l[DEC_WARPS];
    __shared__ float s_acc[DEC_WARPS][32 * R];
    const unsigned i = blockIdx.x / h, hh = blockIdx.x - i * h;
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned row = meta[3 * i], pos = meta[3 * i + 1], shifted = meta[3 * i + 2];
    const size_t d = (size_t)h * dh;
    const float* q = qkv + (size_t)i * 3 * d + (size_t)hh * dh;
    float qr[R], acc[R];
#pragma unroll
    for (int t = 0; t < R; ++t) {
        const unsigned c = lane + 32 * t;
        qr[t] = c < dh ? q[c] : 0.0f;
        acc[t] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const size_t base = ((size_t)row * h + hh) * t_max * dh;
    for (unsigned j = warp; j <= pos; j += DEC_WARPS) {
        const float* kj = kc + base + (size_t)j * dh;
        const float* vj = vc + base + (size_t)j * dh;
        float part = 0.0f;
#pragma unroll
        for (int t = 0; t < R; ++t) {
            const unsigned c = lane + 32 * t;
            if (c < dh) part += qr[t] * kj[c];
        }
        const float s = warp_sum(part) * scale;
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn);  // 0 on the first key (m = −inf)
        const float e = expf(s - mn);
        l = l * corr + e;
#pragma unroll
        for (int t = 0; t < R; ++t) {
            const unsigned c = lane + 32 * t;
            if (c < dh) acc[t] = acc[t] * corr + e * vj[c];
        }
        m = mn;
    }
    if (lane == 0) {
        s_m[warp] = m;  // a warp without keys (p + 1 < 8) leaves m = −inf, l = 0, acc = 0
        s_l[warp] = l;
    }
#pragma unroll
    for (int t = 0; t < R; ++t) s_acc[warp][lane + 32 * t] = acc[t];
    __syncthreads();
    float mx = s_m[0];  // warp 0 always holds key 0: mx is finite
    for (int w = 1; w < DEC_WARPS; ++w) mx = fmaxf(mx, s_m[w]);
    float sum = 0.0f;
    for (int w = 0; w < DEC_WARPS; ++w) sum += s_l[w] * expf(s_m[w] - mx);
    const float inv = 1.0f / sum;
    float* out = z + (size_t)i * d + (size_t)hh * dh;
    const float* sh = (shift != nullptr && shifted != 0) ? shift + (size_t)hh * dh : nullptr;
    for (unsigned c = threadIdx.x; c < dh; c += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < DEC_WARPS; ++w) o += s_acc[w][c] * expf(s_m[w] - mx);
        // Explicit rounding (no fused multiply-add): the shifted z is exactly fl(z + shift),
        // as in the training attention's epilogue and the CPU reference.
        o = __fmul_rn(o, inv);
        if (sh != nullptr) o = __fadd_rn(o, sh[c]);
        out[c] = o;
    }
}

// dh ≤ 32·R; the launcher picks the smallest R of 1, 2, 4, 8 that holds dh.
#define DEC_ATTN(R)                                                                        \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_r##R(       \
        float* __restrict__ z, const float* __restrict__ qkv, const float* __restrict__ kc, \
        const float* __restrict__ vc, const unsigned* __restrict__ meta,                   \
        const float* __restrict__ shift, unsigned h, unsigned dh, unsigned t_max,          \
        float scale) {                                                                     \
        attention_decode_impl<R>(z, qkv, kc, vc, meta, shift, h, dh, t_max, scale);        \
    }
DEC_ATTN(1)
DEC_ATTN(2)
DEC_ATTN(4)
DEC_ATTN(8)
