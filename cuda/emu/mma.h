// Stand-in for CUDA's <mma.h> (nvcuda::wmma) when cuda/emu compiles kernels for the host.
//
// On the GPU a fragment is spread over the 32 lanes of a warp in an unspecified layout. Here
// every lane holds the WHOLE tile (num_elements = rows·cols), computed redundantly, so a kernel
// passes the emulation only if it treats fragments as opaque: element-wise loops over
// `x[0..num_elements)` that do the same thing to every element are fine; anything that assumes
// which element a lane holds is not (read tiles back through shared memory instead).
// store_matrix_sync writes from lane 0 only, so a lane that reads the stored tile before a
// __syncwarp()/__syncthreads() sees stale data, as it may on the GPU.
// Supported: bf16 (and float accumulators) 16x16x16, row/col-major a and b.
// Speed: as every lane repeats its warp's mma_sync on identical fragments, in emu.h's fiber mode
// (lanes run one after another on one OS thread) mma_sync remembers its last 256 distinct
// (a, b, c) inputs by content (hash, then a full byte comparison) with their results and returns
// a remembered result bit for bit instead of recomputing it; the maths, hence every result, is
// unchanged. Not in -DEMU_OS_THREADS mode, where lanes run concurrently.
#pragma once
#include "cuda_bf16.h"
#include <cstdint>
#include <cstring>
#include <type_traits>
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment;
template <class Use, int M, int N, int K, class T, class Layout> struct fragment {
    // matrix_a: M x K; matrix_b: K x N; accumulator: M x N. Stored row-major here.
    static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
    static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
    static constexpr int num_elements = rows * cols;
    T x[rows * cols];
};
template <class T> inline T __emu_from_float(float v) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
    else return T(v);
}
template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, V v) {
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = __emu_from_float<T>(float(v));
}
// Typed loads: element (r, c) of the tile at p[r*ldm + c] (row_major) or p[c*ldm + r] (col_major).
template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
    using F = fragment<Use, M, N, K, T, L>;
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c)
            f.x[r * F::cols + c] = std::is_same_v<L, col_major> ? p[c * ldm + r] : p[r * ldm + c];
}
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const T* p, unsigned ldm, layout_t l) {
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c) f.x[r * N + c] = l == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t l) {
    if ((threadIdx.x & 31) == 0)
        for (int r = 0; r < M; ++r)
            for (int c = 0; c < N; ++c) (l == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
}
// d = a·b + c with products and sums in fp32 (the tensor cores' fp32 accumulation; the GPU's
// order of the 16 partial products inside one mma is not reproduced).
#ifndef EMU_OS_THREADS
// One remembered mma_sync: its inputs' bytes and hash, and its result.
template <int M, int N, int K> struct MmaMemo {
    uint64_t hash = 0;
    bool valid = false;
    __nv_bfloat16 a[M * K], b[K * N];
    float c[M * N], d[M * N];
};
// Direct-mapped by the low 8 bits of the hash.
template <int M, int N, int K> inline MmaMemo<M, N, K> mma_memo[256];
// Folds `bytes` (a multiple of 8) at p into the hash h.
inline uint64_t mma_hash(uint64_t h, const void* p, size_t bytes) {
    const unsigned char* q = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t w;
        memcpy(&w, q + i, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    return h;
}
#endif
template <int M, int N, int K, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float, void>& d,
                     const fragment<matrix_a, M, N, K, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, M, N, K, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, M, N, K, float, void>& c) {
#ifndef EMU_OS_THREADS
    static_assert(sizeof a.x % 8 == 0 && sizeof b.x % 8 == 0 && sizeof c.x % 8 == 0);
    const uint64_t h = mma_hash(mma_hash(mma_hash(0, a.x, sizeof a.x), b.x, sizeof b.x), c.x, sizeof c.x);
    MmaMemo<M, N, K>& e = mma_memo<M, N, K>[h & 255];
    if (e.valid && e.hash == h && memcmp(e.a, a.x, sizeof a.x) == 0 && memcmp(e.b, b.x, sizeof b.x) == 0 &&
        memcmp(e.c, c.x, sizeof c.x) == 0) {
        memcpy(d.x, e.d, sizeof e.d);
        return;
    }
    // Copied before d is written: d may be c.
    e.valid = false;
    memcpy(e.a, a.x, sizeof a.x);
    memcpy(e.b, b.x, sizeof b.x);
    memcpy(e.c, c.x, sizeof c.x);
#endif
    float out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float s = c.x[i * N + j];
            for (int k = 0; k < K; ++k) s += __bfloat162float(a.x[i * K + k]) * __bfloat162float(b.x[k * N + j]);
            out[i * N + j] = s;
        }
    for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
#ifndef EMU_OS_THREADS
    memcpy(e.d, out, sizeof out);
    e.hash = h;
    e.valid = true;
#endif
}
}  // namespace wmma
}  // namespace nvcuda
