// AdamW update and global gradient norm over the model's flat fp32 buffers.
//
// Memory layout: the whole model is one flat fp32 vector of n parameters (see
// src/model/params.rs). The caller owns four device buffers of n floats each:
//   p  master weights (read, written in place)     g  gradients (read only)
//   m  first moment   (read, written in place)     v  second moment (read, written in place)
// and optionally a bf16 copy of the weights, n x 2 bytes (written only), which the matmuls read.
// Elements [0, no_decay_len) are not decayed (the embedding comes first in the layout).
//
// The math is src/optim/adamw.rs `adamw_reference`, operation for operation, with every fp32
// operation written as a round-to-nearest intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn,
// __fsqrt_rn) so that nvcc cannot contract a multiply and an add into an FMA: the GPU then
// computes the same IEEE fp32 operations in the same order as the CPU reference.
//
// For step t, learning rate lr, clip scale s, gradient g:
//   g  = s * g
//   p  = p - (lr*wd)*p                          (i >= no_decay_len only)
//   m  = b1*m + (1-b1)*g
//   v  = b2*v + ((1-b2)*g)*g
//   p  = p - (lr*(m/bias1)) / (sqrt(v/bias2) + eps)      bias1 = 1-b1^t, bias2 = 1-b2^t
//
// Clipping without a host sync: the grad-norm kernels below write ||g|| to device memory;
// adamw_step reads it through `grad_norm` and computes s exactly as `clip_scale` in adamw.rs:
//   s = (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1
// When `grad_norm` is null, s = args.clip_scale (computed on the host).
#include "common.cuh"

// Mirror of `StepArgs` in src/optim/adamw.rs (#[repr(C)]: eight f32, then one u64; 40 bytes,
// 8-byte aligned). Passed to the kernel by value.
struct AdamWArgs {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float clip_scale;
    float bias1;  // 1 - beta1^t
    float bias2;  // 1 - beta2^t
    unsigned long long no_decay_len;
};
static_assert(sizeof(AdamWArgs) == 40, "AdamWArgs must match StepArgs (40 bytes)");

// Scalars shared by every element of one step.
struct AdamWScalars {
    float scale;  // clip scale s
    float lr_wd;  // lr * weight_decay
    float omb1;   // 1 - beta1
    float omb2;   // 1 - beta2
};

__device__ __forceinline__ float adamw_elem(float& p, float g, float& m, float& v,
                                            unsigned long long i, const AdamWArgs& a,
                                            const AdamWScalars& s) {
    const float gi = __fmul_rn(g, s.scale);
    float pi = p;
    if (i >= a.no_decay_len) pi = __fsub_rn(pi, __fmul_rn(s.lr_wd, pi));
    const float mi = __fadd_rn(__fmul_rn(a.beta1, m), __fmul_rn(s.omb1, gi));
    const float vi = __fadd_rn(__fmul_rn(a.beta2, v), __fmul_rn(__fmul_rn(s.omb2, gi), gi));
    const float mhat = __fdiv_rn(mi, a.bias1);
    const float vhat = __fdiv_rn(vi, a.bias2);
    const float upd = __fdiv_rn(__fmul_rn(a.lr, mhat), __fadd_rn(__fsqrt_rn(vhat), a.eps));
    p = __fsub_rn(pi, upd);
    m = mi;
    v = vi;
    return p;
}

// One fused AdamW step over n elements. Grid-stride: any grid size gives the same result
// (each element is independent). When p, g, m, v are 16-byte aligned and p_bf16 is null or
// 8-byte aligned, elements are processed four at a time (float4 loads, one 8-byte bf16 store);
// the last n % 4 elements, or all of them when unaligned, go one at a time.
// p_bf16 may be null (no bf16 copy); grad_norm may be null (use args.clip_scale).
// Launch with 256 threads per block (the launcher sizes the grid to one resident wave).
extern "C" __global__ void __launch_bounds__(256) adamw_step(float* __restrict__ p, const float* __restrict__ g,
                                      float* __restrict__ m, float* __restrict__ v,
                                      __nv_bfloat16* __restrict__ p_bf16, unsigned long long n,
                                      AdamWArgs a, const float* __restrict__ grad_norm,
                                      float max_norm) {
    AdamWScalars s;
    s.scale = a.clip_scale;
    if (grad_norm != nullptr) {
        const float norm = *grad_norm;
        s.scale = (max_norm > 0.0f && norm > max_norm) ? __fdiv_rn(max_norm, __fadd_rn(norm, 1e-6f))
                                                       : 1.0f;
    }
    s.lr_wd = __fmul_rn(a.lr, a.weight_decay);
    s.omb1 = __fsub_rn(1.0f, a.beta1);
    s.omb2 = __fsub_rn(1.0f, a.beta2);

    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;

    const bool vec = is_aligned(p, 16) && is_aligned(g, 16) && is_aligned(m, 16) &&
                     is_aligned(v, 16) && (p_bf16 == nullptr || is_aligned(p_bf16, 8));
    unsigned long long done = 0;
    if (vec) {
        const unsigned long long n4 = n / 4;
        float4* p4 = reinterpret_cast<float4*>(p);
        const float4* g4 = reinterpret_cast<const float4*>(g);
        float4* m4 = reinterpret_cast<float4*>(m);
        float4* v4 = reinterpret_cast<float4*>(v);
        uint2* b4 = reinterpret_cast<uint2*>(p_bf16);
        for (unsigned long long k = tid; k < n4; k += stride) {
            float4 pp = p4[k], gg = g4[k], mm = m4[k], vv = v4[k];
            const unsigned long long i = 4 * k;
            adamw_elem(pp.x, gg.x, mm.x, vv.x, i + 0, a, s);
            adamw_elem(pp.y, gg.y, mm.y, vv.y, i + 1, a, s);
            adamw_elem(pp.z, gg.z, mm.z, vv.z, i + 2, a, s);
            adamw_elem(pp.w, gg.w, mm.w, vv.w, i + 3, a, s);
            p4[k] = pp;
            m4[k] = mm;
            v4[k] = vv;
            if (b4 != nullptr) b4[k] = pack_bf16x4(pp.x, pp.y, pp.z, pp.w);
        }
        done = n4 * 4;
    }
    for (unsigned long long i = done + tid; i < n; i += stride) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_elem(pi, g[i], mi, vi, i, a, s);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (p_bf16 != nullptr) p_bf16[i] = f32_to_bf16(pi);
    }
}

// ---- global gradient norm: ||g||_2 in two deterministic levels, no atomics ----
//
// Level 1 (grad_norm_partials): block b squares and sums g[b*CHUNK, min((b+1)*CHUNK, n)) in
// fp64 and writes partials[b]. The chunking depends only on n (CHUNK is fixed, one block per
// chunk), never on the GPU's SM count. Thread t adds, in order, elements (or float4s)
// t, t + blockDim, ...; the block then reduces with block_sum (fixed pattern).
// Level 2 (grad_norm_finish): ONE block of GRAD_NORM_THREADS threads; thread t adds partials
// t, t + blockDim, ... in order, block_sum, then thread 0 writes sqrt(total) as fp32.
// The CPU `global_norm` also sums in fp64 (4096-element chunks): the two agree to fp64
// rounding, far below the 1e-5 relative tolerance; the final fp32 rounding may differ by 1 ulp.
#define GRAD_NORM_CHUNK 16384
#define GRAD_NORM_THREADS 256

extern "C" __global__ void __launch_bounds__(GRAD_NORM_THREADS)
grad_norm_partials(const float* __restrict__ g, unsigned long long n, double* __restrict__ partials) {
    __shared__ double scratch[32];
    const unsigned long long start = (unsigned long long)blockIdx.x * GRAD_NORM_CHUNK;
    const unsigned long long end = min(start + GRAD_NORM_CHUNK, n);
    double acc = 0.0;
    // start is a multiple of GRAD_NORM_CHUNK, so g + start keeps g's 16-byte alignment.
    if (is_aligned(g, 16)) {
        const unsigned long long n4 = (end - start) / 4;
        const float4* g4 = reinterpret_cast<const float4*>(g + start);
        for (unsigned long long k = threadIdx.x; k < n4; k += blockDim.x) {
            const float4 x = g4[k];
            acc += (double)x.x * x.x;
            acc += (double)x.y * x.y;
            acc += (double)x.z * x.z;
            acc += (double)x.w * x.w;
        }
        for (unsigned long long i = start + n4 * 4 + threadIdx.x; i < end; i += blockDim.x) {
            const double x = g[i];
            acc += x * x;
        }
    } else {
        for (unsigned long long i = start + threadIdx.x; i < end; i += blockDim.x) {
            const double x = g[i];
            acc += x * x;
        }
    }
    const double total = block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

extern "C" __global__ void __launch_bounds__(1024)
grad_norm_finish(const double* __restrict__ partials, unsigned long long nparts, float* __restrict__ norm) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (unsigned long long i = threadIdx.x; i < nparts; i += blockDim.x) acc += partials[i];
    const double total = block_sum(acc, scratch);
    if (threadIdx.x == 0) *norm = (float)sqrt(total);
}
