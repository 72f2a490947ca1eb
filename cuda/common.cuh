// Shared device helpers for every kernel file: bf16 conversions, alignment tests and
// deterministic warp/block reductions.
//
// Determinism: every reduction here combines values in a fixed pattern that depends only on
// the thread's index (butterfly shuffles, then warp 0 over the per-warp sums), never on timing,
// so the same inputs with the same launch shape give the same bits on every run.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

// fp32 -> bf16, round to nearest, ties to even (NaN stays NaN).
__device__ __forceinline__ __nv_bfloat16 f32_to_bf16(float x) { return __float2bfloat16_rn(x); }

// bf16 -> fp32 (exact).
__device__ __forceinline__ float bf16_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

// Packs four floats into four bf16 (RNE each) as one 8-byte word: element 0 in the low half.
__device__ __forceinline__ uint2 pack_bf16x4(float a, float b, float c, float d) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(a, b);  // .x = a (low 16 bits), .y = b
    __nv_bfloat162 hi = __floats2bfloat162_rn(c, d);
    uint2 out;
    out.x = *reinterpret_cast<const uint32_t*>(&lo);
    out.y = *reinterpret_cast<const uint32_t*>(&hi);
    return out;
}

// True when `p` is a multiple of `bytes` (vector loads need 16 for float4, 8 for 4 x bf16).
__device__ __forceinline__ bool is_aligned(const void* p, uintptr_t bytes) {
    return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// Sum over the 32 lanes of a warp; every lane gets the same result (butterfly, fixed order).
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Sum over the whole block; the result is valid in thread 0 (and returned to every thread).
// Requires blockDim.x a multiple of 32 and at most 1024; `scratch` is 32 elements of shared
// memory. Contains __syncthreads: every thread of the block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T x, T* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    x = warp_sum(x);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    T y = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : T(0);
    if (warp == 0) y = warp_sum(y);
    if (threadIdx.x == 0) scratch[0] = y;
    __syncthreads();
    return scratch[0];
}

// Asynchronous copies global -> shared (sm_80+ `cp.async`), 16 bytes at a time:
//   cp_async16(dst, src, bytes)  copies `bytes` (0..16) from src and zero-fills the rest of the
//                                16 at dst; dst and src 16-byte aligned; with bytes = 0 nothing
//                                is read (src must still be a valid address).
//   cp_async_commit()            closes the group of copies this thread issued since the last
//                                commit (possibly empty).
//   cp_async_wait<N>()           waits until at most the N most recent groups of this thread
//                                are still in flight; their data is then visible to this thread,
//                                and to the block after a __syncthreads.
// The host emulation (cuda/emu/emu.h) holds each copy back until the wait that covers it, so a
// read of the destination before that wait sees the old contents there, as it may on the GPU.
#ifdef __CUDACC__
__device__ __forceinline__ void cp_async16(void* dst, const void* src, unsigned bytes) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif
