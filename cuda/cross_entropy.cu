// Fused softmax cross-entropy over rows of fp32 logits, without a probability tensor.
//
// Layouts (caller-owned): logits [n, V] fp32 (row-major; overwritten by the gradient when
// `has_grad`), targets [n] u32, losses [n] fp32.
// CPU reference: src/backend/cpu/loss.rs `cross_entropy`. Per row i with target t:
//   m = max_j x_j;  S = Σ_j exp(x_j − m);  losses[i] = (m + ln S) − x_t
//   with grad:  x_j <- exp(x_j − m) · (scale / S);  then x_t <- x_t − scale
// (`scale` = grad_scale, e.g. 1/n for a mean loss).
//
// One block per row, CE_THREADS threads. Pass 1 reads the row once with an online max/sum:
// each thread keeps (m, S) over its elements j = tid, tid + blockDim, ... (float4s when
// V % 4 == 0 and logits are 16-byte aligned), rescaling S when the max grows; the pairs are
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

extern "C" __global__ void __launch_bounds__(CE_THREADS)
cross_entropy_fwd_bwd(float* __restrict__ logits, float* __restrict__ losses,
                      const unsigned int* __restrict__ targets, unsigned int n, unsigned int v,
                      float scale, int has_grad) {
    __shared__ float sm_m[32];
    __shared__ float sm_s[32];
    const unsigned int row = blockIdx.x;
    if (row >= n) return;  // whole block
    float* x = logits + (size_t)row * v;
    const unsigned int t = targets[row];
    const unsigned int tid = threadIdx.x;
    const unsigned int lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const float xt = (tid == 0 && t < v) ? x[t] : 0.0f;
    const bool vec = (v % 4 == 0) && is_aligned(logits, 16);
    const unsigned int v4 = v / 4;

    float m = -INFINITY, s = 0.0f;
    if (vec) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (unsigned int k = tid; k < v4; k += blockDim.x) {
            const float4 a = x4[k];
            online_add(m, s, a.x);
            online_add(m, s, a.y);
            online_add(m, s, a.z);
            online_add(m, s, a.w);
        }
    } else {
        for (unsigned int k = tid; k < v; k += blockDim.x) online_add(m, s, x[k]);
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
        float4* x4 = reinterpret_cast<float4*>(x);
        for (unsigned int k = tid; k < v4; k += blockDim.x) {
            float4 a = x4[k];
            a.x = expf(a.x - m) * k_scale;
            a.y = expf(a.y - m) * k_scale;
            a.z = expf(a.z - m) * k_scale;
            a.w = expf(a.w - m) * k_scale;
            const unsigned int j = 4 * k;
            if (t - j < 4) {  // unsigned: true only for j <= t < j + 4
                if (t == j) a.x -= scale;
                if (t == j + 1) a.y -= scale;
                if (t == j + 2) a.z -= scale;
                if (t == j + 3) a.w -= scale;
            }
            x4[k] = a;
        }
    } else {
        for (unsigned int k = tid; k < v; k += blockDim.x) {
            float a = expf(x[k] - m) * k_scale;
            if (k == t) a -= scale;
            x[k] = a;
        }
    }
}
