// Non-parametric layernorm (OLMo v1: no weight, no bias), forward and backward, fp32.
//
// Layouts (row-major fp32, caller-owned; no buffer may alias another):
//   x, a, b, xsum, out, dy, xhat, dx  [n, d]      mean, rstd  [n]
// CPU references: src/backend/cpu/layernorm.rs `layernorm_fwd`, `layernorm_bwd`.
//
// One warp per row (LN_WARPS rows per block of 32·LN_WARPS threads). Lane l reads elements
// (or float4s when d % 4 == 0 and every [n, d] buffer is 16-byte aligned) l, l + 32, ... in
// order, and the lanes combine with warp_sum (butterfly, fixed pattern), so the result depends
// only on the inputs and d: deterministic from run to run.
//
// Two versions of each kernel, side by side (benches/kernels.rs compares them; the launcher
// picks one, src/backend/cuda/layernorm.rs):
//   *_reread  every pass re-reads the row from memory (L1/L2), so any d works;
//   the plain names hold the row in registers (LN_CACHE float4s a lane, d up to 32·4·LN_CACHE =
//   2048) when the float4 path applies and the row fits, and read it once; otherwise they do
//   exactly what *_reread does.
// Both do the same fp32 operations in the same order on every lane, so they give the same bits.
#include "common.cuh"

#define LN_WARPS 4
// float4s a lane holds in registers in the cached kernels (rows of d <= 2048).
#define LN_CACHE 16

// Per-float4 pieces both versions share, in the order every lane applies them.
// Float4 k of the row at `base` as the first pass reads it: x's, or with RESID the sum a + b
// (a = x), written to xsum for the later passes and the next residual stream.
template <bool RESID>
__device__ __forceinline__ float4 ln_first4(const float* __restrict__ x,
                                           const float* __restrict__ b, float* __restrict__ xsum,
                                           size_t base, unsigned int k) {
    if (!RESID) return reinterpret_cast<const float4*>(x + base)[k];
    const float4 p = reinterpret_cast<const float4*>(x + base)[k];
    const float4 q = reinterpret_cast<const float4*>(b + base)[k];
    const float4 v = make_float4(p.x + q.x, p.y + q.y, p.z + q.z, p.w + q.w);
    reinterpret_cast<float4*>(xsum + base)[k] = v;
    return v;
}
// s += x + y + z + w, one addition at a time.
__device__ __forceinline__ void ln_sum4(float& s, const float4 v) {
    s += v.x;
    s += v.y;
    s += v.z;
    s += v.w;
}
// q += Σ (v − mu)², one component at a time.
__device__ __forceinline__ void ln_sq4(float& q, const float4 v, float mu) {
    const float a = v.x - mu, b = v.y - mu, c = v.z - mu, e = v.w - mu;
    q += a * a;
    q += b * b;
    q += c * c;
    q += e * e;
}
// (v − mu) · rs.
__device__ __forceinline__ float4 ln_norm4(const float4 v, float mu, float rs) {
    return make_float4((v.x - mu) * rs, (v.y - mu) * rs, (v.z - mu) * rs, (v.w - mu) * rs);
}
// s1 += Σ dy, s2 += Σ dy·xhat, component by component.
__device__ __forceinline__ void ln_dot4(float& s1, float& s2, const float4 a, const float4 b) {
    s1 += a.x;
    s1 += a.y;
    s1 += a.z;
    s1 += a.w;
    s2 += a.x * b.x;
    s2 += a.y * b.y;
    s2 += a.z * b.z;
    s2 += a.w * b.w;
}
// rstd · (dy − mdy − xhat·mdyx).
__device__ __forceinline__ float4 ln_grad4(const float4 a, const float4 b, float rs, float mdy,
                                          float mdyx) {
    return make_float4(rs * (a.x - mdy - b.x * mdyx), rs * (a.y - mdy - b.y * mdyx),
                       rs * (a.z - mdy - b.z * mdyx), rs * (a.w - mdy - b.w * mdyx));
}
// v + g, component by component (v's value first, as `v += g`).
__device__ __forceinline__ float4 ln_add4(const float4 v, const float4 g) {
    return make_float4(v.x + g.x, v.y + g.y, v.z + g.z, v.w + g.w);
}

// Forward. Per row, as the CPU op: mean = Σx · (1/d); var = Σ(x − mean)² · (1/d) (biased);
// rstd = 1 / sqrt(var + eps) (IEEE sqrt and division); out = (x − mean) · rstd.
// Writes out [n, d], mean [n], rstd [n].
// RESID (layernorm_fwd_residual): the input is x = a + b, computed in the first pass and written
// to xsum [n, d] (the next residual stream), which the later passes read back (each lane reads
// only what it wrote itself). xsum must not alias a or b.
template <bool RESID, int MAXV>
__device__ __forceinline__ void ln_fwd_row(float* __restrict__ out, float* __restrict__ mean,
                                           float* __restrict__ rstd, float* __restrict__ xsum,
                                           const float* __restrict__ x,
                                           const float* __restrict__ b, unsigned int n,
                                           unsigned int d, float eps) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int row = blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (row >= n) return;  // the whole warp leaves together; no block-wide sync below
    const size_t base = (size_t)row * d;
    float* o = out + base;
    const float inv_d = 1.0f / (float)d;
    bool vec = (d % 4 == 0) && is_aligned(x, 16) && is_aligned(out, 16);
    if (RESID) vec = vec && is_aligned(b, 16) && is_aligned(xsum, 16);
    const unsigned int d4 = d / 4;
    // The row the second and third passes read: x itself, or the sum written in pass one.
    const float* xr = RESID ? xsum + base : x + base;
    const float4* x4 = reinterpret_cast<const float4*>(xr);

    if (MAXV > 0 && vec && d4 <= 32u * MAXV) {
        // The row in registers: r[i] is float4 k = lane + 32·i (the order of the loops below).
        float4 r[MAXV > 0 ? MAXV : 1];
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < MAXV; ++i) {
            const unsigned int k = lane + 32u * i;
            if (k < d4) {
                const float4 v = ln_first4<RESID>(x, b, xsum, base, k);
                r[i] = v;
                ln_sum4(s, v);
            }
        }
        const float mu = warp_sum(s) * inv_d;
        float q = 0.0f;
#pragma unroll
        for (int i = 0; i < MAXV; ++i) {
            if (lane + 32u * i < d4) ln_sq4(q, r[i], mu);
        }
        const float var = warp_sum(q) * inv_d;
        const float rs = 1.0f / sqrtf(var + eps);
        float4* o4 = reinterpret_cast<float4*>(o);
#pragma unroll
        for (int i = 0; i < MAXV; ++i) {
            const unsigned int k = lane + 32u * i;
            if (k < d4) o4[k] = ln_norm4(r[i], mu, rs);
        }
        if (lane == 0) {
            mean[row] = mu;
            rstd[row] = rs;
        }
        return;
    }

    float s = 0.0f;
    if (vec) {
        for (unsigned int k = lane; k < d4; k += 32) {
            const float4 v = ln_first4<RESID>(x, b, xsum, base, k);
            ln_sum4(s, v);
        }
    } else {
        for (unsigned int k = lane; k < d; k += 32) {
            float v;
            if (RESID) {
                v = x[base + k] + b[base + k];
                xsum[base + k] = v;
            } else {
                v = xr[k];
            }
            s += v;
        }
    }
    const float mu = warp_sum(s) * inv_d;

    float q = 0.0f;
    if (vec) {
        for (unsigned int k = lane; k < d4; k += 32) ln_sq4(q, x4[k], mu);
    } else {
        for (unsigned int k = lane; k < d; k += 32) {
            const float a = xr[k] - mu;
            q += a * a;
        }
    }
    const float var = warp_sum(q) * inv_d;
    const float rs = 1.0f / sqrtf(var + eps);

    if (vec) {
        float4* o4 = reinterpret_cast<float4*>(o);
        for (unsigned int k = lane; k < d4; k += 32) o4[k] = ln_norm4(x4[k], mu, rs);
    } else {
        for (unsigned int k = lane; k < d; k += 32) o[k] = (xr[k] - mu) * rs;
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// Entry points: the cached kernels (MAXV = LN_CACHE) and the re-reading ones (MAXV = 0).
#define LN_FWD_KERNELS(SUFFIX, MAXV)                                                              \
    extern "C" __global__ void __launch_bounds__(32 * LN_WARPS)                                   \
        layernorm_fwd##SUFFIX(float* __restrict__ out, float* __restrict__ mean,                  \
                              float* __restrict__ rstd, const float* __restrict__ x,              \
                              unsigned int n, unsigned int d, float eps) {                        \
        ln_fwd_row<false, MAXV>(out, mean, rstd, nullptr, x, nullptr, n, d, eps);                 \
    }                                                                                             \
    /* Residual add fused with the forward: xsum = a + b (element-wise, fp32 round to nearest, */ \
    /* as the CPU `add`), then layernorm of xsum exactly as layernorm_fwd. */                     \
    extern "C" __global__ void __launch_bounds__(32 * LN_WARPS)                                   \
        layernorm_fwd_residual##SUFFIX(float* __restrict__ out, float* __restrict__ mean,         \
                                       float* __restrict__ rstd, float* __restrict__ xsum,        \
                                       const float* __restrict__ a, const float* __restrict__ b,  \
                                       unsigned int n, unsigned int d, float eps) {               \
        ln_fwd_row<true, MAXV>(out, mean, rstd, xsum, a, b, n, d, eps);                           \
    }

LN_FWD_KERNELS(, LN_CACHE)
LN_FWD_KERNELS(_reread, 0)

// Backward from the saved output xhat (= the normalised input) and rstd. Per row:
// mdy = Σdy · (1/d); mdyx = Σ(dy·xhat) · (1/d); v = rstd · (dy − mdy − xhat·mdyx);
// dx = v (accumulate == 0) or dx + v (accumulate != 0). MAXV > 0: dy and xhat held in
// registers (2·MAXV float4s a lane) when the float4 path applies and d <= 32·4·MAXV.
template <int MAXV>
__device__ __forceinline__ void ln_bwd_row(float* __restrict__ dx, const float* __restrict__ dy,
                                           const float* __restrict__ xhat,
                                           const float* __restrict__ rstd, unsigned int n,
                                           unsigned int d, int accumulate) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int row = blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (row >= n) return;
    const size_t base = (size_t)row * d;
    const float inv_d = 1.0f / (float)d;
    const bool vec = (d % 4 == 0) && is_aligned(dx, 16) && is_aligned(dy, 16) && is_aligned(xhat, 16);
    const unsigned int d4 = d / 4;
    const float4* dy4 = reinterpret_cast<const float4*>(dy + base);
    const float4* xh4 = reinterpret_cast<const float4*>(xhat + base);

    if (MAXV > 0 && vec && d4 <= 32u * MAXV) {
        float4 ra[MAXV > 0 ? MAXV : 1], rb[MAXV > 0 ? MAXV : 1];
        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int i = 0; i < MAXV; ++i) {
            const unsigned int k = lane + 32u * i;
            if (k < d4) {
                const float4 a = dy4[k], b = xh4[k];
                ra[i] = a;
                rb[i] = b;
                ln_dot4(s1, s2, a, b);
            }
        }
        const float mdy = warp_sum(s1) * inv_d;
        const float mdyx = warp_sum(s2) * inv_d;
        const float rs = rstd[row];
        float4* dx4 = reinterpret_cast<float4*>(dx + base);
#pragma unroll
        for (int i = 0; i < MAXV; ++i) {
            const unsigned int k = lane + 32u * i;
            if (k < d4) {
                const float4 v = ln_grad4(ra[i], rb[i], rs, mdy, mdyx);
                dx4[k] = accumulate ? ln_add4(v, dx4[k]) : v;
            }
        }
        return;
    }

    float s1 = 0.0f, s2 = 0.0f;
    if (vec) {
        for (unsigned int k = lane; k < d4; k += 32) ln_dot4(s1, s2, dy4[k], xh4[k]);
    } else {
        for (unsigned int k = lane; k < d; k += 32) {
            const float a = dy[base + k];
            s1 += a;
            s2 += a * xhat[base + k];
        }
    }
    const float mdy = warp_sum(s1) * inv_d;
    const float mdyx = warp_sum(s2) * inv_d;
    const float rs = rstd[row];

    if (vec) {
        float4* dx4 = reinterpret_cast<float4*>(dx + base);
        for (unsigned int k = lane; k < d4; k += 32) {
            const float4 v = ln_grad4(dy4[k], xh4[k], rs, mdy, mdyx);
            dx4[k] = accumulate ? ln_add4(v, dx4[k]) : v;
        }
    } else {
        for (unsigned int k = lane; k < d; k += 32) {
            const float v = rs * (dy[base + k] - mdy - xhat[base + k] * mdyx);
            dx[base + k] = accumulate ? dx[base + k] + v : v;
        }
    }
}

#define LN_BWD_KERNEL(SUFFIX, MAXV)                                                               \
    extern "C" __global__ void __launch_bounds__(32 * LN_WARPS)                                   \
        layernorm_bwd##SUFFIX(float* __restrict__ dx, const float* __restrict__ dy,               \
                              const float* __restrict__ xhat, const float* __restrict__ rstd,     \
                              unsigned int n, unsigned int d, int accumulate) {                   \
        ln_bwd_row<MAXV>(dx, dy, xhat, rstd, n, d, accumulate);                                   \
    }

LN_BWD_KERNEL(, LN_CACHE)
LN_BWD_KERNEL(_reread, 0)
