// Stand-in for CUDA's <mma.h> (nvcuda::wmma) when cuda/emu compiles kernels for the host.
//
// On the GPU a fragment is spread over the 32 lanes of a warp in an unspecified layout. Here
// lane 0 of each warp holds the WHOLE tile (num_elements = rows·cols) and does all of the
// warp's tensor-core work: load_matrix_sync and mma_sync compute on lane 0 only, and
// store_matrix_sync writes from lane 0 only. The other lanes' fragments keep whatever
// fill_fragment (which every lane runs) last put there. So a kernel passes the emulation only
// if it treats fragments as opaque: element-wise loops over `x[0..num_elements)` that do the
// same thing to every element are fine, and results leave a fragment through
// store_matrix_sync; a lane that uses a fragment's elements for anything else computes with
// stale values here, as it would compute with the wrong elements on the GPU. A lane that
// reads a stored tile before a __syncwarp()/__syncthreads() sees stale data, as it may on the
// GPU. (One lane instead of 32 doing the arithmetic also makes the emulated products 32 times
// cheaper, which whole training steps through the emulated driver need.)
// Supported: bf16 (and float accumulators) 16x16x16, row/col-major a and b.
#pragma once
#include "cuda_bf16.h"
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
    if ((threadIdx.x & 31) != 0) return;
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c)
            f.x[r * F::cols + c] = std::is_same_v<L, col_major> ? p[c * ldm + r] : p[r * ldm + c];
}
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const T* p, unsigned ldm, layout_t l) {
    if ((threadIdx.x & 31) != 0) return;
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
template <int M, int N, int K, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float, void>& d,
                     const fragment<matrix_a, M, N, K, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, M, N, K, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, M, N, K, float, void>& c) {
    if ((threadIdx.x & 31) != 0) return;
    // Widen once, then accumulate row by row: out[i][j] still gets c, a_i0·b_0j, a_i1·b_1j, ...
    // added one at a time in k order (the same bits as a dot product per element), and the
    // j loop vectorises.
    float fa[M * K], fb[K * N], out[M * N];
    for (int i = 0; i < M * K; ++i) fa[i] = __bfloat162float(a.x[i]);
    for (int i = 0; i < K * N; ++i) fb[i] = __bfloat162float(b.x[i]);
    for (int i = 0; i < M * N; ++i) out[i] = c.x[i];
    for (int i = 0; i < M; ++i)
        for (int k = 0; k < K; ++k) {
            const float aik = fa[i * K + k];
            for (int j = 0; j < N; ++j) out[i * N + j] += aik * fb[k * N + j];
        }
    for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}
}  // namespace wmma
}  // namespace nvcuda
