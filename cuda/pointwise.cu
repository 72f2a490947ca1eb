// Element-wise ops of the block: SwiGLU (forward, backward), rotary embedding (forward,
// backward), the clip_qkv clamp (forward, backward), fp32. Each output element is written by
// exactly one thread: deterministic.
//
// CPU references: src/backend/cpu/pointwise.rs `swiglu_fwd`, `swiglu_bwd`, `rope`, `clamp`,
// `clamp_bwd`.
// All kernels are grid-stride loops: any grid size gives the same result.
#include "common.cuh"

#define PW_THREADS 256

// σ(g) = 1 / (1 + e^(−g)) with IEEE division (no fast math), as the CPU's `sigmoid`.
__device__ __forceinline__ float sigmoidf_(float g) { return 1.0f / (1.0f + expf(-g)); }

// ---- SwiGLU ----
// gu [n, 2f]: row i holds gate gu[i, 0..f) then up gu[i, f..2f).
// Forward: h [n, f], h[i, j] = (g·σ(g))·u with g = gu[i, j], u = gu[i, f + j].
// Vector path (float4) when f % 4 == 0 and h, gu are 16-byte aligned; else scalar.
extern "C" __global__ void __launch_bounds__(PW_THREADS)
swiglu_fwd(float* __restrict__ h, const float* __restrict__ gu, unsigned long long n,
           unsigned long long f) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    if (f % 4 == 0 && is_aligned(h, 16) && is_aligned(gu, 16)) {
        const unsigned long long f4 = f / 4;
        float4* h4 = reinterpret_cast<float4*>(h);
        const float4* gu4 = reinterpret_cast<const float4*>(gu);
        for (unsigned long long k = tid; k < n * f4; k += stride) {
            const unsigned long long row = k / f4, j = k - row * f4;
            const float4 g = gu4[row * 2 * f4 + j];
            const float4 u = gu4[row * 2 * f4 + f4 + j];
            h4[k] = make_float4(g.x * sigmoidf_(g.x) * u.x, g.y * sigmoidf_(g.y) * u.y,
                                g.z * sigmoidf_(g.z) * u.z, g.w * sigmoidf_(g.w) * u.w);
        }
    } else {
        for (unsigned long long k = tid; k < n * f; k += stride) {
            const unsigned long long row = k / f, j = k - row * f;
            const float g = gu[row * 2 * f + j];
            const float u = gu[row * 2 * f + f + j];
            h[k] = g * sigmoidf_(g) * u;
        }
    }
}

// Backward: dh [n, f], gu [n, 2f] (forward input) -> dgu [n, 2f] (overwritten):
//   dgate = dh·u·σ(g)·(1 + g·(1 − σ(g)))     dup = dh·(g·σ(g))
__device__ __forceinline__ void swiglu_bwd1(float dh, float g, float u, float& dg, float& du) {
    const float sg = sigmoidf_(g);
    du = dh * (g * sg);
    dg = dh * u * sg * (1.0f + g * (1.0f - sg));
}

extern "C" __global__ void __launch_bounds__(PW_THREADS)
swiglu_bwd(float* __restrict__ dgu, const float* __restrict__ dh, const float* __restrict__ gu,
           unsigned long long n, unsigned long long f) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    if (f % 4 == 0 && is_aligned(dgu, 16) && is_aligned(dh, 16) && is_aligned(gu, 16)) {
        const unsigned long long f4 = f / 4;
        float4* dgu4 = reinterpret_cast<float4*>(dgu);
        const float4* dh4 = reinterpret_cast<const float4*>(dh);
        const float4* gu4 = reinterpret_cast<const float4*>(gu);
        for (unsigned long long k = tid; k < n * f4; k += stride) {
            const unsigned long long row = k / f4, j = k - row * f4;
            const float4 d = dh4[k];
            const float4 g = gu4[row * 2 * f4 + j];
            const float4 u = gu4[row * 2 * f4 + f4 + j];
            float4 dg, du;
            swiglu_bwd1(d.x, g.x, u.x, dg.x, du.x);
            swiglu_bwd1(d.y, g.y, u.y, dg.y, du.y);
            swiglu_bwd1(d.z, g.z, u.z, dg.z, du.z);
            swiglu_bwd1(d.w, g.w, u.w, dg.w, du.w);
            dgu4[row * 2 * f4 + j] = dg;
            dgu4[row * 2 * f4 + f4 + j] = du;
        }
    } else {
        for (unsigned long long k = tid; k < n * f; k += stride) {
            const unsigned long long row = k / f, j = k - row * f;
            float dg, du;
            swiglu_bwd1(dh[k], gu[row * 2 * f + j], gu[row * 2 * f + f + j], dg, du);
            dgu[row * 2 * f + j] = dg;
            dgu[row * 2 * f + f + j] = du;
        }
    }
}

// ---- Rotary embedding ----
// In place on the q and k thirds of qkv [n = B·T, 3D] (row r: q ‖ k ‖ v, D = H·dh; head h of
// q at columns h·dh.., of k at D + h·dh..); v is not touched. Position of row r: r % t.
// table [t, dh/2] cosines then [t, dh/2] sines (fp32, computed in f64 on the host and rounded:
// crate::model::transformer::rope_table). Per head, x1 = x[0..dh/2), x2 = x[dh/2..dh) (HF
// rotate-half), for i < dh/2 with c = cos[pos, i], s = sin[pos, i]:
//   forward   (transpose == 0): x1' = x1·c − x2·s, x2' = x2·c + x1·s
//   backward  (transpose != 0): x1' = x1·c + x2·s, x2' = x2·c − x1·s  (the inverse rotation)
// One thread per (row, q/k head, i): n·D pairs in all, i fastest.
extern "C" __global__ void __launch_bounds__(PW_THREADS)
rope(float* __restrict__ qkv, const float* __restrict__ table, unsigned long long n,
     unsigned int t, unsigned int d, unsigned int dh, int transpose) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    const unsigned int half = dh / 2;
    const unsigned long long pairs = n * d;  // per row: 2H heads x dh/2 = D pairs
    const float* cos_t = table;
    const float* sin_t = table + (size_t)t * half;
    for (unsigned long long k = tid; k < pairs; k += stride) {
        const unsigned long long row = k / d;
        const unsigned int rem = (unsigned int)(k - row * d);
        const unsigned int head = rem / half;
        const unsigned int i = rem - head * half;
        const unsigned int pos = (unsigned int)(row % t);
        const float c = cos_t[(size_t)pos * half + i];
        const float s = sin_t[(size_t)pos * half + i];
        float* x = qkv + row * 3 * (unsigned long long)d + (size_t)head * dh + i;
        const float a = x[0], b = x[half];
        if (transpose) {
            x[0] = a * c + b * s;
            x[half] = b * c - a * s;
        } else {
            x[0] = a * c - b * s;
            x[half] = b * c + a * s;
        }
    }
}

// ---- Residual add and row broadcast (the step's glue) ----
// add: out[i] = a[i] + b[i] for i < n (out may alias a or b: each element is read then written
// by the same thread). float4 path when all three are 16-byte aligned.
extern "C" __global__ void __launch_bounds__(PW_THREADS)
add_f32(float* out, const float* a, const float* b, unsigned long long n) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    if (is_aligned(out, 16) && is_aligned(a, 16) && is_aligned(b, 16)) {
        const unsigned long long n4 = n / 4;
        float4* o4 = reinterpret_cast<float4*>(out);
        const float4* a4 = reinterpret_cast<const float4*>(a);
        const float4* b4 = reinterpret_cast<const float4*>(b);
        for (unsigned long long k = tid; k < n4; k += stride) {
            const float4 x = a4[k], y = b4[k];
            o4[k] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
        }
        for (unsigned long long k = n4 * 4 + tid; k < n; k += stride) out[k] = a[k] + b[k];
    } else {
        for (unsigned long long k = tid; k < n; k += stride) out[k] = a[k] + b[k];
    }
}

// add_rows: x [n, d] row-major, v [d]: x[r, c] += v[c] (the ITI head shift on hook_z, or a
// bias on a linear layer's output). One thread per element.
extern "C" __global__ void __launch_bounds__(PW_THREADS)
add_rows_f32(float* __restrict__ x, const float* __restrict__ v, unsigned long long n,
             unsigned long long d) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long k = tid; k < n * d; k += stride) x[k] += v[k % d];
}

// ---- Clamp (clip_qkv: the q, k, v projections' outputs clamped to [-c, c] before RoPE) ----
// clamp_f32: x[i] = -c where x[i] < -c, c where x[i] > c, unchanged otherwise (NaN stays NaN:
// both comparisons are false), in place, i < n. Selects only, no arithmetic: bit-identical to
// the CPU. float4 path when x is 16-byte aligned.
__device__ __forceinline__ float clamp1(float x, float c) {
    return x < -c ? -c : (x > c ? c : x);
}

extern "C" __global__ void __launch_bounds__(PW_THREADS)
clamp_f32(float* __restrict__ x, unsigned long long n, float c) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    if (is_aligned(x, 16)) {
        const unsigned long long n4 = n / 4;
        float4* x4 = reinterpret_cast<float4*>(x);
        for (unsigned long long k = tid; k < n4; k += stride) {
            const float4 v = x4[k];
            x4[k] = make_float4(clamp1(v.x, c), clamp1(v.y, c), clamp1(v.z, c), clamp1(v.w, c));
        }
        for (unsigned long long k = n4 * 4 + tid; k < n; k += stride) x[k] = clamp1(x[k], c);
    } else {
        for (unsigned long long k = tid; k < n; k += stride) x[k] = clamp1(x[k], c);
    }
}

// clamp_bwd_f32: dx[i] kept where -c <= x[i] <= c (x the clamp's input), 0 elsewhere (NaN
// included), in place on dx, i < n: PyTorch's clamp_backward. float4 path when both are 16-byte
// aligned.
__device__ __forceinline__ float clamp_grad1(float d, float x, float c) {
    return (x >= -c && x <= c) ? d : 0.0f;
}

extern "C" __global__ void __launch_bounds__(PW_THREADS)
clamp_bwd_f32(float* __restrict__ dx, const float* __restrict__ x, unsigned long long n,
              float c) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    if (is_aligned(dx, 16) && is_aligned(x, 16)) {
        const unsigned long long n4 = n / 4;
        float4* d4 = reinterpret_cast<float4*>(dx);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (unsigned long long k = tid; k < n4; k += stride) {
            const float4 d = d4[k], v = x4[k];
            d4[k] = make_float4(clamp_grad1(d.x, v.x, c), clamp_grad1(d.y, v.y, c),
                                clamp_grad1(d.z, v.z, c), clamp_grad1(d.w, v.w, c));
        }
        for (unsigned long long k = n4 * 4 + tid; k < n; k += stride)
            dx[k] = clamp_grad1(dx[k], x[k], c);
    } else {
        for (unsigned long long k = tid; k < n; k += stride) dx[k] = clamp_grad1(dx[k], x[k], c);
    }
}
