// Host emulation of the few CUDA features the kernels in cuda/*.cu use, so their indexing,
// vector/scalar paths and barrier/shuffle patterns can be checked on a machine without a GPU
// (cuda/emu/run.sh). Each block runs as blockDim.x std::threads: __syncthreads is a block-wide
// std::barrier, __shfl_xor_sync an exchange through a per-warp buffer between two warp-wide
// barriers, __shared__ a static (blocks run one after another). fp32 maths is the host's
// (-ffp-contract=off), so this checks logic, not the GPU's rounding or speed.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <memory>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
struct dim3v { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3v threadIdx, blockIdx;
inline dim3v blockDim, gridDim;
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
using std::min; using std::max;
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
struct Warp { std::barrier<> bar{32}; alignas(8) unsigned char buf[32 * 8]; };
inline thread_local Warp* my_warp;
inline thread_local std::barrier<>* my_block;
template <class T> T __shfl_xor_sync(unsigned, T v, int off) {
    T* b = reinterpret_cast<T*>(my_warp->buf);
    int lane = threadIdx.x & 31;
    b[lane] = v;
    my_warp->bar.arrive_and_wait();
    T r = b[lane ^ off];
    my_warp->bar.arrive_and_wait();
    return r;
}
inline void __syncthreads() { my_block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { my_warp->bar.arrive_and_wait(); }
template <class F> void launch(dim3v g, dim3v b, F f) {
    gridDim = g; blockDim = b;
    unsigned nt = b.x;
    for (unsigned z = 0; z < g.z; ++z) for (unsigned y = 0; y < g.y; ++y) for (unsigned x = 0; x < g.x; ++x) {
        std::barrier<> blk(nt);
        std::vector<std::unique_ptr<Warp>> warps;
        for (unsigned w = 0; w < nt / 32; ++w) warps.emplace_back(new Warp());
        std::vector<std::thread> ths;
        for (unsigned t = 0; t < nt; ++t) ths.emplace_back([&, t] {
            threadIdx = {t, 0, 0}; blockIdx = {x, y, z};
            my_warp = warps[t / 32].get(); my_block = &blk;
            f();
        });
        for (auto& th : ths) th.join();
    }
}
