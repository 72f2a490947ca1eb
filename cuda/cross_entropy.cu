// Fused softmax cross-entropy over rows of bf16 logits, without a probability tensor.
//
// Layouts (caller-owned): logits [n, V] bf16 (row-major; overwritten by the gradient, rounded
// to bf16, when `has_grad`), targets [n] u32, losses [n] fp32. The logits are stored in bf16
// (DESIGN.md: 1.65 GB instead of 3.3 GB at OLMo-1B, 8 x 2048, and half the bytes to read);
// every value is widened to fp32 on load and all the math below is fp32.
// CPU reference: src/backend/cpu/cross_entropy.rs `cross_entropy`, fed the same bf16 values. Per row i
// with target t:
//   m = max_j x_j;  S = Σ_j exp(x_j − m);  losses[i] = (m + ln S) − x_t
//   with grad:  x_j <- bf16(exp(x_j − m) · (scale / S) − [j = t]·scale)
// (`scale` = grad_scale, e.g. 1/n for a mean loss).
//
// One block per row, CE_THREADS threads. Pass 1 reads the row once with an online max/sum:
// each thread keeps (m, S) over its elements j = tid, tid + blockDim, ... (8 at a time, one
// 16-byte load, when V % 8 == 0 and the logits are 16-byte aligned, as at V = 50,304; one at a
// time otherwise), rescaling S when the max grows; the pairs are
// merged by a butterfly within each warp, then warp 0 merges the warps' pairs: a fixed
// pattern, so deterministic. The merge multiplies with __fmul_rn (no FMA contraction), which
// makes it commutative bit for bit. Pass 2 (only with grad) reads the row again and writes the
// gradient in place. The target logit is read by thread 0 before any thread writes.
// A target >= V (the caller checks targets) gives a NaN loss and no one-hot term.
#include "common.cuh"

#define CE_THREADS 256

__device__ __forceinline__ void online_add(float& m, float& s, float x) {
    if (x > m) {
        s = __fmul_rn(s, expf(m - x)) + 1.0f;  // m = -inf at first: s = 0·0 + 1
        m = x;
    } else {
        s += expf(x - m);
    }
}

__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    const float mm = fmaxf(m, m2);
    const float a = (m == -INFINITY) ? 0.0f : __fmul_rn(s, expf(m - mm));
    const float b = (m2 == -INFINITY) ? 0.0f : __fmul_rn(s2, expf(m2 - mm));
    m = mm;
    s = a + b;
}

// Eight bf16 (one 16-byte word, element 0 in the low half of u.x) widened to fp32, and back.
__device__ __forceinline__ void ce_unpack8(const uint4 u, float (&x)[8]) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        x[2 * i] = __uint_as_float(w[i] << 16);
        x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ uint4 ce_pack8(const float (&x)[8]) {
    const uint2 lo = pack_bf16x4(x[0], x[1], x[2], x[3]);
    const uint2 hi = pack_bf16x4(x[4], x[5], x[6], x[7]);
    return make_uint4(lo.x, lo.y, hi.x, hi.y);
}

extern "C" __global__ void __launch_bounds__(CE_THREADS)
cross_entropy_fwd_bwd(__nv_bfloat16* __restrict__ logits, float* __restrict__ losses,
                      const unsigned int* __restrict__ targets, unsigned int n, unsigned int v,
                      float scale, int has_grad) {
    __shared__ float sm_m[32];
    __shared__ float sm_s[32];
    const unsigned int row = blockIdx.x;
    if (row >= n) return;  // whole block
    __nv_bfloat16* x = logits + (size_t)row * v;
    const unsigned int t = targets[row];
    const unsigned int tid = threadIdx.x;
    const unsigned int lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const float xt = (tid == 0 && t < v) ? bf16_to_f32(x[t]) : 0.0f;
    const bool vec = (v % 8 == 0) && is_aligned(logits, 16);
    const unsigned int v8 = v / 8;

    float m = -INFINITY, s = 0.0f;
    if (vec) {
        const uint4* x8 = reinterpret_cast<const uint4*>(x);
        for (unsigned int k = tid; k < v8; k += blockDim.x) {
            float a[8];
            ce_unpack8(x8[k], a);
#pragma unroll
            for (int e = 0; e < 8; ++e) online_add(m, s, a[e]);
        }
    } else {
        for (unsigned int k = tid; k < v; k += blockDim.x) online_add(m, s, bf16_to_f32(x[k]));
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
        merge(m, s, m2, s2);
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = (lane < nwarps) ? sm_m[lane] : -INFINITY;
        s = (lane < nwarps) ? sm_s[lane] : 0.0f;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
            merge(m, s, m2, s2);
        }
    }
    __syncthreads();  // every warp has read sm_* before lane 0 of warp 0 overwrites it
    if (tid == 0) {
        sm_m[0] = m;
        sm_s[0] = s;
        losses[row] = (t < v) ? (m + logf(s)) - xt : __int_as_float(0x7fc00000);
    }
    if (!has_grad) return;
    __syncthreads();
    m = sm_m[0];
    s = sm_s[0];
    const float k_scale = scale / s;
    if (vec) {
        uint4* x8 = reinterpret_cast<uint4*>(x);
        for (unsigned int k = tid; k < v8; k += blockDim.x) {
            float a[8];
            ce_unpack8(x8[k], a);
            const unsigned int j = 8 * k;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                a[e] = expf(a[e] - m) * k_scale;
                if (t == j + e) a[e] -= scale;
            }
            x8[k] = ce_pack8(a);
        }
    } else {
        for (unsigned int k = tid; k < v; k += blockDim.x) {
            float a = expf(bf16_to_f32(x[k]) - m) * k_scale;
            if (k == t) a -= scale;
            x[k] = f32_to_bf16(a);
        }
    }
}
