// The three GEMMs of a linear layer y = x · Wᵀ on the tensor cores: operands rounded to bf16
// (round to nearest, ties to even) as they are staged into shared memory, products and sums in
// fp32 (nvcuda::wmma bf16 16x16x16, fp32 accumulators), fp32 output.
//
// Layouts (row-major, caller-owned; the output aliases no input; any element offset):
//   x, dx [m, k]    W, dW [n, k]    y, dy [m, n]
// all fp32, except in the output layer's variants (the `_bf16` kernels at the end), where y or
// dy are the logits, stored in bf16: matmul_fwd_bf16 rounds y to bf16 (RNE) as it writes it,
// and matmul_bwd_x_bf16 / matmul_bwd_w_bf16 read a bf16 dy (the logits' gradient). A bf16
// operand is widened to fp32 on load and rounded back on staging, which is exact, so a bf16
// variant gives bit for bit what its fp32 twin gives on the same values widened to fp32 (the
// GPU tests check exactly that).
// CPU references: src/backend/cpu/matmul.rs `forward`, `backward_x`, `backward_w`.
//
// All three are one product C[M, N] (+)= Σ_r A(i, r) · B(r, j), r over the reduction length K,
// with C row-major (ldc = N) and each operand stored either "k-contiguous" (consecutive r
// adjacent in memory) or "mn-contiguous" (consecutive i, resp. j, adjacent):
//   matmul_fwd    y  = x · Wᵀ   M=m N=n K=k  A(i,r) = x[i·k + r]   (k-contig, ld k)
//                                            B(r,j) = W[j·k + r]   (k-contig, ld k)
//   matmul_bwd_x  dx = dy · W   M=m N=k K=n  A(i,r) = dy[i·n + r]  (k-contig, ld n)
//                                            B(r,j) = W[r·k + j]   (mn-contig, ld k)
//   matmul_bwd_w  dW (+)= dyᵀ·x M=n N=k K=m  A(i,r) = dy[r·n + i]  (mn-contig, ld n)
//                                            B(r,j) = x[r·k + j]   (mn-contig, ld k)
// bwd_w reduces over m, the token dimension (16384 at OLMo-1B).
//
// Tiling: one block of 256 threads (8 warps, 1-D) computes one 128x128 tile of C; warp w owns
// the 64x32 sub-tile at rows (w / 4)·64, columns (w % 4)·32 as 4x2 wmma accumulators. K is
// walked in steps of 32. Shared memory holds two stages of (A tile, B tile) in bf16, each tile
// stored in the operand's own orientation (so global loads and shared stores are contiguous):
//   k-contig tile  [128][32 + 8]  (row = i or j, column = r)   -> wmma row_major A / col_major B
//   mn-contig tile [32][128 + 8]  (row = r, column = i or j)   -> wmma col_major A / row_major B
// The 8-element (16-byte) row padding makes a k-contig row 80 bytes (20 banks) long instead of
// 64, so the eight rows one fragment load touches start on eight different groups of 4 banks:
// nvcc compiles the wmma fragment loads to plain LDS (no ldmatrix in this build's SASS), and on
// the k-contig tiles the 32-bit loads of a fragment are conflict-free.
// Pipeline: while the warps multiply stage s, each thread already holds the next K-tile's
// 16 + 16 fp32 values in registers (issued before the multiply); after it they are
// rounded to bf16 and stored into stage s^1; one __syncthreads per K-step.
// Global loads: each thread loads 4 groups of 4 consecutive elements per operand per K-step, one
// vector load each (float4, or 8 bytes of bf16) when the operand's leading dimension and
// contiguous extent are multiples of 4 and its base is aligned to the vector (16 or 8 bytes),
// else 4 scalar loads; anything outside [0, M|N) x [0, K) is zero.
// Blocks are rastered in groups of 8 tile-rows (all tile-columns of a group before the next),
// so the blocks running at one time share A and B tiles in L2.
// Resources (ptxas, sm_80 and sm_90): about 170 registers a thread (64 accumulator floats, 32
// prefetched floats, fragments), no spills, 40 KiB static shared memory: one block (8 warps) per
// SM. __launch_bounds__(256, 2) would cap registers at 128 and spills (40-64 bytes), so it is
// not used.
//
// Determinism: each C element is summed by one warp of one block over r = 0, 32, 64, ... in a
// fixed order (the tensor cores' order inside a 16-deep step is fixed by the hardware); no
// atomics, no split-k. accumulate (bwd_w): C = old + Σ, the old fp32 value read once after the
// whole sum. K = 0 writes zeros (or leaves old + 0).
#include <mma.h>

#include "common.cuh"

#define MM_BM 128
#define MM_BN 128
#define MM_BK 32
#define MM_THREADS 256
#define MM_PAD 8
#define MM_GROUP_M 8
// Leading dimensions (bf16 elements) of the two tile orientations in shared memory.
#define MM_LD_KC (MM_BK + MM_PAD)   // k-contig tile [128][40]
#define MM_LD_MNC (MM_BM + MM_PAD)  // mn-contig tile [32][136]
// Elements reserved per tile: the larger of 128·40 = 5120 and 32·136 = 4352.
#define MM_TILE_ELEMS (MM_BM * MM_LD_KC)
// Float4 groups per thread per operand tile: 128·32 / 4 / 256.
#define MM_GROUPS 4

static_assert(MM_BM == MM_BN, "the tile loaders assume square block tiles");
static_assert(MM_BM * MM_LD_KC >= MM_BK * MM_LD_MNC, "tile slot too small");
static_assert(MM_BM * MM_BK / 4 == MM_GROUPS * MM_THREADS, "4 groups of 4 per thread");

// This thread's share of one operand tile, fp32, as loaded from global memory.
struct MmTileRegs {
    float4 v[MM_GROUPS];
};

// One element and four consecutive elements of an fp32 or bf16 operand, widened to fp32
// (exact). mm_load4 needs p aligned to 4 elements (16 bytes fp32, 8 bytes bf16).
__device__ __forceinline__ float mm_load1(const float* p) { return *p; }
__device__ __forceinline__ float mm_load1(const __nv_bfloat16* p) { return bf16_to_f32(*p); }
__device__ __forceinline__ float4 mm_load4(const float* p) {
    return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 mm_load4(const __nv_bfloat16* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    // bf16 -> fp32 is a 16-bit shift: element 0 is the low half of u.x.
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                       __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}

// Loads this thread's 4 groups of the operand tile covering rows mn0..mn0+127 (i or j) and
// r = k0..k0+31. KC: element (mn, r) is at src[mn·ld + r] (group = 4 consecutive r; thread
// group g = tid + 256·it is row g / 8, r-offset (g % 8)·4); otherwise at src[r·ld + mn]
// (group = 4 consecutive mn; g is r-row g / 32, mn-offset (g % 32)·4). Out-of-range elements
// are 0. vec: vector loads (ld and the contiguous extent multiples of 4, src aligned to 4
// elements, so a group is entirely in or out of range). T: float or __nv_bfloat16.
template <bool KC, class T>
__device__ __forceinline__ void mm_load_tile(MmTileRegs& t, const T* __restrict__ src,
                                             unsigned ld, unsigned mn_ext, unsigned k_ext,
                                             unsigned mn0, unsigned k0, bool vec) {
#pragma unroll
    for (int it = 0; it < MM_GROUPS; ++it) {
        const unsigned g = threadIdx.x + it * MM_THREADS;
        unsigned outer, outer_ext, inner, inner_ext;
        if (KC) {
            outer = mn0 + (g >> 3);
            outer_ext = mn_ext;
            inner = k0 + (g & 7) * 4;
            inner_ext = k_ext;
        } else {
            outer = k0 + (g >> 5);
            outer_ext = k_ext;
            inner = mn0 + (g & 31) * 4;
            inner_ext = mn_ext;
        }
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (outer < outer_ext) {
            const T* p = src + (size_t)outer * ld;
            if (vec) {
                if (inner < inner_ext) v = mm_load4(p + inner);
            } else {
                if (inner + 0 < inner_ext) v.x = mm_load1(p + inner + 0);
                if (inner + 1 < inner_ext) v.y = mm_load1(p + inner + 1);
                if (inner + 2 < inner_ext) v.z = mm_load1(p + inner + 2);
                if (inner + 3 < inner_ext) v.w = mm_load1(p + inner + 3);
            }
        }
        t.v[it] = v;
    }
}

// Rounds this thread's groups to bf16 (RNE) and stores them into the shared tile `s` at the
// positions mm_load_tile read them from (8 bytes per group).
template <bool KC>
__device__ __forceinline__ void mm_store_tile(const MmTileRegs& t, __nv_bfloat16* s) {
#pragma unroll
    for (int it = 0; it < MM_GROUPS; ++it) {
        const unsigned g = threadIdx.x + it * MM_THREADS;
        const unsigned off = KC ? (g >> 3) * MM_LD_KC + (g & 7) * 4 : (g >> 5) * MM_LD_MNC + (g & 31) * 4;
        const float4 v = t.v[it];
        *reinterpret_cast<uint2*>(s + off) = pack_bf16x4(v.x, v.y, v.z, v.w);
    }
}

// Type selection (std::conditional without the host header).
template <bool C, class T, class E>
struct MmPick {
    using type = T;
};
template <class T, class E>
struct MmPick<false, T, E> {
    using type = E;
};

// wmma fragment types: A k-contig tiles are row_major (element (i, r) at p[i·ld + r]), mn-contig
// col_major; B k-contig tiles are col_major (element (r, j) at p[j·ld + r]), mn-contig row_major.
template <bool A_KC, bool B_KC>
struct MmFrags {
    using LayoutA =
        typename MmPick<A_KC, nvcuda::wmma::row_major, nvcuda::wmma::col_major>::type;
    using LayoutB =
        typename MmPick<B_KC, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type;
    using A = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA>;
    using B = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB>;
    using C = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
};

// acc[i][j] += A(warp rows wm·64 + 16i.., r) · B(r, warp cols wn·32 + 16j..) over the 32 r of
// the staged tiles `as`, `bs`, in two 16-deep steps (r = 0..15, then 16..31).
template <bool A_KC, bool B_KC>
__device__ __forceinline__ void mm_multiply(typename MmFrags<A_KC, B_KC>::C (&acc)[4][2],
                                            const __nv_bfloat16* as, const __nv_bfloat16* bs,
                                            unsigned wm, unsigned wn) {
    using F = MmFrags<A_KC, B_KC>;
#pragma unroll
    for (int ks = 0; ks < MM_BK; ks += 16) {
        typename F::B b[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const unsigned col = wn * 32 + j * 16;
            if (B_KC)
                nvcuda::wmma::load_matrix_sync(b[j], bs + col * MM_LD_KC + ks, MM_LD_KC);
            else
                nvcuda::wmma::load_matrix_sync(b[j], bs + ks * MM_LD_MNC + col, MM_LD_MNC);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned row = wm * 64 + i * 16;
            typename F::A a;
            if (A_KC)
                nvcuda::wmma::load_matrix_sync(a, as + row * MM_LD_KC + ks, MM_LD_KC);
            else
                nvcuda::wmma::load_matrix_sync(a, as + ks * MM_LD_MNC + row, MM_LD_MNC);
#pragma unroll
            for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
        }
    }
}

// Writes 8 consecutive fp32 results sv[0..8) of one output row to out[0..8) (columns col..col+7
// of N), adding the old values first when `accumulate`: one pair of float4 stores when `vec`
// and all 8 are inside the row, else element by element up to N.
__device__ __forceinline__ void mm_store8(float* out, const float* sv, unsigned col, unsigned N,
                                          bool vec, int accumulate) {
    if (vec && col + 8 <= N) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float4 v = make_float4(sv[4 * h], sv[4 * h + 1], sv[4 * h + 2], sv[4 * h + 3]);
            if (accumulate) {
                const float4 o = reinterpret_cast<const float4*>(out)[h];
                v.x = o.x + v.x;
                v.y = o.y + v.y;
                v.z = o.z + v.z;
                v.w = o.w + v.w;
            }
            reinterpret_cast<float4*>(out)[h] = v;
        }
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            if (col + e < N) out[e] = accumulate ? out[e] + sv[e] : sv[e];
        }
    }
}

// The same into a bf16 output, each value rounded (RNE): one 16-byte store when `vec` and all 8
// are inside the row. A bf16 output is never accumulated into (only the logits use it).
__device__ __forceinline__ void mm_store8(__nv_bfloat16* out, const float* sv, unsigned col,
                                          unsigned N, bool vec, int /*accumulate*/) {
    if (vec && col + 8 <= N) {
        const uint2 lo = pack_bf16x4(sv[0], sv[1], sv[2], sv[3]);
        const uint2 hi = pack_bf16x4(sv[4], sv[5], sv[6], sv[7]);
        *reinterpret_cast<uint4*>(out) = make_uint4(lo.x, lo.y, hi.x, hi.y);
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            if (col + e < N) out[e] = f32_to_bf16(sv[e]);
        }
    }
}

// The origin (m0, n0) of this block's 128x128 tile of C[M, N]. Grouped raster: MM_GROUP_M
// tile-rows at a time, all their tile-columns before the next, so the blocks running at one
// time share A and B tiles in L2.
__device__ __forceinline__ void mm_tile_origin(unsigned M, unsigned N, unsigned& m0, unsigned& n0) {
    const unsigned tiles_m = (M + MM_BM - 1) / MM_BM;
    const unsigned tiles_n = (N + MM_BN - 1) / MM_BN;
    const unsigned per_group = MM_GROUP_M * tiles_n;
    const unsigned pid = blockIdx.x;
    const unsigned first_m = (pid / per_group) * MM_GROUP_M;
    const unsigned group_rows = min(tiles_m - first_m, (unsigned)MM_GROUP_M);
    const unsigned in_group = pid % per_group;
    m0 = (first_m + in_group % group_rows) * MM_BM;
    n0 = (in_group / group_rows) * MM_BN;
}

// Writes the block's accumulators (warp w: rows m0 + (w / 4)·64 + 16i, columns n0 + (w % 4)·32
// + 16j) to C[M, N] (ldc = N), added to the old values when `accumulate`. Each accumulator goes
// through this warp's 16x16 fp32 scratch in `smem` (8 warps x 1 KiB, free for reuse: the caller
// has finished reading its tiles and passed a __syncthreads), since fragment layouts are opaque;
// lane l writes row l / 2, columns (l % 2)·8 .. +8 of it, bounds-checked.
template <class TC, class Acc>
__device__ __forceinline__ void mm_epilogue(TC* __restrict__ C, Acc (&acc)[4][2], float* smem,
                                            unsigned m0, unsigned n0, unsigned M, unsigned N,
                                            int accumulate) {
    const unsigned warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const unsigned wm = warp >> 2, wn = warp & 3;
    float* scratch = smem + warp * 256;
    // Vector stores need every row start 16-byte aligned: N a multiple of 16 bytes' worth of
    // elements (4 fp32, 8 bf16); col is a multiple of 8.
    const bool vec_c = N % (16 / sizeof(TC)) == 0 && is_aligned(C, 16);
    const unsigned r = lane >> 1, c0 = (lane & 1) * 8;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            nvcuda::wmma::store_matrix_sync(scratch, acc[i][j], 16, nvcuda::wmma::mem_row_major);
            __syncwarp();
            const unsigned row = m0 + wm * 64 + i * 16 + r;
            const unsigned col = n0 + wn * 32 + j * 16 + c0;
            const float* sv = scratch + r * 16 + c0;
            if (row < M) mm_store8(C + (size_t)row * N + col, sv, col, N, vec_c, accumulate);
            __syncwarp();  // the next store_matrix_sync overwrites the scratch
        }
    }
}

// The block's 128x128 tile of C[M, N] (+)= A · B (see the file comment for A_KC / B_KC, lda,
// ldb). ldc = N. M, N >= 1; K may be 0. TA, TB, TC: float or __nv_bfloat16 (accumulate only
// with a float C).
template <bool A_KC, bool B_KC, class TA, class TB, class TC>
__device__ __forceinline__ void mm_gemm(TC* __restrict__ C, const TA* __restrict__ A,
                                        const TB* __restrict__ B, unsigned M, unsigned N,
                                        unsigned K, unsigned lda, unsigned ldb, int accumulate) {
    using F = MmFrags<A_KC, B_KC>;
    // Two stages of (A tile, B tile); after the K loop, reused as 8 warps x 16x16 fp32 scratch.
    __shared__ __align__(128) unsigned char smem_raw[2 * 2 * MM_TILE_ELEMS * sizeof(__nv_bfloat16)];
    __nv_bfloat16* smem = reinterpret_cast<__nv_bfloat16*>(smem_raw);

    unsigned m0, n0;
    mm_tile_origin(M, N, m0, n0);

    const unsigned warp = threadIdx.x >> 5;
    const unsigned wm = warp >> 2, wn = warp & 3;

    const bool vec_a = lda % 4 == 0 && (A_KC ? K : M) % 4 == 0 && is_aligned(A, 4 * sizeof(TA));
    const bool vec_b = ldb % 4 == 0 && (B_KC ? K : N) % 4 == 0 && is_aligned(B, 4 * sizeof(TB));

    typename F::C acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);

    const unsigned ktiles = (K + MM_BK - 1) / MM_BK;
    MmTileRegs ra, rb;
    if (ktiles > 0) {
        mm_load_tile<A_KC, TA>(ra, A, lda, M, K, m0, 0, vec_a);
        mm_load_tile<B_KC, TB>(rb, B, ldb, N, K, n0, 0, vec_b);
        mm_store_tile<A_KC>(ra, smem);
        mm_store_tile<B_KC>(rb, smem + MM_TILE_ELEMS);
        __syncthreads();
    }
    for (unsigned t = 0; t < ktiles; ++t) {
        const unsigned s = t & 1;
        const bool more = t + 1 < ktiles;
        // Issue the next K-tile's global loads before multiplying this one.
        if (more) {
            mm_load_tile<A_KC, TA>(ra, A, lda, M, K, m0, (t + 1) * MM_BK, vec_a);
            mm_load_tile<B_KC, TB>(rb, B, ldb, N, K, n0, (t + 1) * MM_BK, vec_b);
        }
        const __nv_bfloat16* cur = smem + s * 2 * MM_TILE_ELEMS;
        mm_multiply<A_KC, B_KC>(acc, cur, cur + MM_TILE_ELEMS, wm, wn);
        if (more) {
            // Stage s^1 was last read in step t-1, before the barrier that ended it.
            __nv_bfloat16* nxt = smem + (s ^ 1) * 2 * MM_TILE_ELEMS;
            mm_store_tile<A_KC>(ra, nxt);
            mm_store_tile<B_KC>(rb, nxt + MM_TILE_ELEMS);
        }
        __syncthreads();
    }

    mm_epilogue(C, acc, reinterpret_cast<float*>(smem_raw), m0, n0, M, N, accumulate);
}

// y[m, n] = x[m, k] · W[n, k]ᵀ (overwrite). Grid: ceil(m/128)·ceil(n/128) blocks of 256.
extern "C" __global__ void __launch_bounds__(MM_THREADS)
matmul_fwd(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
           unsigned int m, unsigned int k, unsigned int n) {
    mm_gemm<true, true>(y, x, w, m, n, k, k, k, 0);
}

// dx[m, k] = dy[m, n] · W[n, k] (overwrite). Grid: ceil(m/128)·ceil(k/128) blocks of 256.
extern "C" __global__ void __launch_bounds__(MM_THREADS)
matmul_bwd_x(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
             unsigned int m, unsigned int k, unsigned int n) {
    mm_gemm<true, false>(dx, dy, w, m, k, n, n, k, 0);
}

// dW[n, k] (+)= dy[m, n]ᵀ · x[m, k]; accumulate != 0: dW = old + Σ. Grid: ceil(n/128)·ceil(k/128)
// blocks of 256.
extern "C" __global__ void __launch_bounds__(MM_THREADS)
matmul_bwd_w(float* __restrict__ dw, const float* __restrict__ dy, const float* __restrict__ x,
             unsigned int m, unsigned int k, unsigned int n, int accumulate) {
    mm_gemm<false, false>(dw, dy, x, n, k, m, n, k, accumulate);
}

// The output layer's variants, where y / dy are the logits [m, n] in bf16 (n = V).
// matmul_fwd with y rounded to bf16 (RNE) as it is written.
extern "C" __global__ void __launch_bounds__(MM_THREADS)
matmul_fwd_bf16(__nv_bfloat16* __restrict__ y, const float* __restrict__ x,
                const float* __restrict__ w, unsigned int m, unsigned int k, unsigned int n) {
    mm_gemm<true, true>(y, x, w, m, n, k, k, k, 0);
}

// matmul_bwd_x reading a bf16 dy.
extern "C" __global__ void __launch_bounds__(MM_THREADS)
matmul_bwd_x_bf16(float* __restrict__ dx, const __nv_bfloat16* __restrict__ dy,
                  const float* __restrict__ w, unsigned int m, unsigned int k, unsigned int n) {
    mm_gemm<true, false>(dx, dy, w, m, k, n, n, k, 0);
}

// matmul_bwd_w reading a bf16 dy.
extern "C" __global__ void __launch_bounds__(MM_THREADS)
matmul_bwd_w_bf16(float* __restrict__ dw, const __nv_bfloat16* __restrict__ dy,
                  const float* __restrict__ x, unsigned int m, unsigned int k, unsigned int n,
                  int accumulate) {
    mm_gemm<false, false>(dw, dy, x, n, k, m, n, k, accumulate);
}

// ---------------------------------------------------------------------------------------------
// Version 2 ("async"): bf16 operands in global memory, a 4-stage cp.async pipeline.
//
// Version 1 above reads fp32 operands and rounds them on the way into shared memory: every
// K-step moves 32 KiB per block through L2 for 1 MFLOP (32 FLOP per byte) and holds the next
// tile in registers (32 floats a thread), one block per SM. Version 2 multiplies the same
// tiles in the same order, but from bf16 copies of the operands:
//   matmul_to_bf16   dst[r·ld + c] = bf16(src[r·cols + c]) (RNE) for c < cols, 0 up to ld (a
//                    multiple of 8): the launcher's copy of each fp32 operand (and of a bf16
//                    one whose layout the copies below cannot read directly). Grid-stride, one
//                    thread per 8 elements (16 bytes of dst). CPU reference: bf16 rounding.
//   matmul_*_async   C (+)= A · B with A and B bf16, their leading dimensions (in elements)
//                    multiples of 8 and their bases 16-byte aligned. Each K-step's tiles are
//                    fetched by cp.async straight into shared memory, 16 bytes per copy, two
//                    copies per thread per operand (a 128x32 k-contig tile: row q / 4, columns
//                    (q % 4)·8; a 32x128 mn-contig tile: row q / 16, columns (q % 16)·8), with
//                    the copy's tail zero-filled past the operand's contiguous extent and
//                    nothing read past its outer extent. MM2_STAGES stages of (A tile, B tile),
//                    same layouts and padding as version 1, 20 KiB each, 80 KiB in all
//                    (dynamic shared memory; two blocks per SM fit in 227 KiB): the copies for
//                    step t + 3 are in flight while step t multiplies.
// Rounding to bf16 happens once, in matmul_to_bf16, instead of at staging: the same RNE of the
// same values. The multiply (mm_multiply), its order and the epilogue (mm_epilogue) are version
// 1's, so the two versions give the same bits (the emulated checks and the GPU tests hold
// them to that).
#define MM2_STAGES 4
#define MM2_STAGE_ELEMS (2 * MM_TILE_ELEMS)
#define MM2_SMEM_BYTES (MM2_STAGES * MM2_STAGE_ELEMS * 2)  // 81,920 bytes

#ifdef __CUDACC__
#define MM_DYN_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#else
// Host emulation (cuda/emu): blocks run one after another, so one static buffer serves all.
alignas(128) static unsigned char mm_emu_smem[MM2_SMEM_BYTES];
#define MM_DYN_SMEM(name) unsigned char* name = mm_emu_smem
#endif

static_assert(MM_BM * MM_BK / 8 == 2 * MM_THREADS, "two 16-byte copies per thread per tile");
static_assert(MM_LD_KC % 8 == 0 && MM_LD_MNC % 8 == 0, "16-byte aligned shared rows");

// Issues this thread's two cp.async copies of the bf16 operand tile covering rows mn0..mn0+127
// (i or j) and r = k0..k0+31 into the shared tile `s` (orientation as in mm_load_tile).
template <bool KC>
__device__ __forceinline__ void mm2_load_tile(__nv_bfloat16* s, const __nv_bfloat16* __restrict__ src,
                                              unsigned ld, unsigned mn_ext, unsigned k_ext,
                                              unsigned mn0, unsigned k0) {
#pragma unroll
    for (int it = 0; it < 2; ++it) {
        const unsigned q = threadIdx.x + it * MM_THREADS;
        unsigned outer, outer_ext, inner, inner_ext, off;
        if (KC) {
            outer = mn0 + (q >> 2);
            outer_ext = mn_ext;
            inner = k0 + (q & 3) * 8;
            inner_ext = k_ext;
            off = (q >> 2) * MM_LD_KC + (q & 3) * 8;
        } else {
            outer = k0 + (q >> 4);
            outer_ext = k_ext;
            inner = mn0 + (q & 15) * 8;
            inner_ext = mn_ext;
            off = (q >> 4) * MM_LD_MNC + (q & 15) * 8;
        }
        unsigned bytes = 0;
        const __nv_bfloat16* p = src;  // any valid address when nothing is read
        if (outer < outer_ext && inner < inner_ext) {
            bytes = 2 * min(8u, inner_ext - inner);
            p = src + (size_t)outer * ld + inner;
        }
        cp_async16(s + off, p, bytes);
    }
}

// Version 2 of mm_gemm: A and B bf16 (see above), lda and ldb multiples of 8, bases 16-byte
// aligned. M, N >= 1; K may be 0.
template <bool A_KC, bool B_KC, class TC>
__device__ __forceinline__ void mm2_gemm(TC* __restrict__ C, const __nv_bfloat16* __restrict__ A,
                                         const __nv_bfloat16* __restrict__ B, unsigned M,
                                         unsigned N, unsigned K, unsigned lda, unsigned ldb,
                                         int accumulate) {
    using F = MmFrags<A_KC, B_KC>;
    MM_DYN_SMEM(smem_raw);
    __nv_bfloat16* smem = reinterpret_cast<__nv_bfloat16*>(smem_raw);
    unsigned m0, n0;
    mm_tile_origin(M, N, m0, n0);
    const unsigned warp = threadIdx.x >> 5;
    const unsigned wm = warp >> 2, wn = warp & 3;

    typename F::C acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);

    const unsigned ktiles = (K + MM_BK - 1) / MM_BK;
    // Prologue: steps 0 .. MM2_STAGES-2 in flight, one commit group each (empty past the end,
    // so that group t is always step t's).
#pragma unroll
    for (int s = 0; s < MM2_STAGES - 1; ++s) {
        if ((unsigned)s < ktiles) {
            __nv_bfloat16* st = smem + s * MM2_STAGE_ELEMS;
            mm2_load_tile<A_KC>(st, A, lda, M, K, m0, s * MM_BK);
            mm2_load_tile<B_KC>(st + MM_TILE_ELEMS, B, ldb, N, K, n0, s * MM_BK);
        }
        cp_async_commit();
    }
    for (unsigned t = 0; t < ktiles; ++t) {
        // Groups committed so far: MM2_STAGES - 1 + t; step t's is complete once at most the
        // MM2_STAGES - 2 after it are pending. The barrier then makes every thread's copies
        // visible, and tells everyone that step t - 1's stage has been read by all warps.
        cp_async_wait<MM2_STAGES - 2>();
        __syncthreads();
        const unsigned next = t + MM2_STAGES - 1;
        if (next < ktiles) {
            __nv_bfloat16* st = smem + (next % MM2_STAGES) * MM2_STAGE_ELEMS;
            mm2_load_tile<A_KC>(st, A, lda, M, K, m0, next * MM_BK);
            mm2_load_tile<B_KC>(st + MM_TILE_ELEMS, B, ldb, N, K, n0, next * MM_BK);
        }
        cp_async_commit();
        const __nv_bfloat16* cur = smem + (t % MM2_STAGES) * MM2_STAGE_ELEMS;
        mm_multiply<A_KC, B_KC>(acc, cur, cur + MM_TILE_ELEMS, wm, wn);
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the tiles: the epilogue reuses the memory
    mm_epilogue(C, acc, reinterpret_cast<float*>(smem_raw), m0, n0, M, N, accumulate);
}

// y[m, n] = x[m, k] · W[n, k]ᵀ from bf16 x (ld ldx) and W (ld ldw). Grid as matmul_fwd, 256
// threads, MM2_SMEM_BYTES of dynamic shared memory (as every *_async kernel).
extern "C" __global__ void __launch_bounds__(MM_THREADS, 2)
matmul_fwd_async(float* __restrict__ y, const __nv_bfloat16* __restrict__ x,
                 const __nv_bfloat16* __restrict__ w, unsigned int m, unsigned int k,
                 unsigned int n, unsigned int ldx, unsigned int ldw) {
    mm2_gemm<true, true>(y, x, w, m, n, k, ldx, ldw, 0);
}

// The same with y rounded to bf16 (RNE) as it is written (the logits).
extern "C" __global__ void __launch_bounds__(MM_THREADS, 2)
matmul_fwd_async_bf16(__nv_bfloat16* __restrict__ y, const __nv_bfloat16* __restrict__ x,
                      const __nv_bfloat16* __restrict__ w, unsigned int m, unsigned int k,
                      unsigned int n, unsigned int ldx, unsigned int ldw) {
    mm2_gemm<true, true>(y, x, w, m, n, k, ldx, ldw, 0);
}

// dx[m, k] = dy[m, n] · W[n, k] from bf16 dy (ld lddy) and W (ld ldw).
extern "C" __global__ void __launch_bounds__(MM_THREADS, 2)
matmul_bwd_x_async(float* __restrict__ dx, const __nv_bfloat16* __restrict__ dy,
                   const __nv_bfloat16* __restrict__ w, unsigned int m, unsigned int k,
                   unsigned int n, unsigned int lddy, unsigned int ldw) {
    mm2_gemm<true, false>(dx, dy, w, m, k, n, lddy, ldw, 0);
}

// dW[n, k] (+)= dy[m, n]ᵀ · x[m, k] from bf16 dy (ld lddy) and x (ld ldx).
extern "C" __global__ void __launch_bounds__(MM_THREADS, 2)
matmul_bwd_w_async(float* __restrict__ dw, const __nv_bfloat16* __restrict__ dy,
                   const __nv_bfloat16* __restrict__ x, unsigned int m, unsigned int k,
                   unsigned int n, unsigned int lddy, unsigned int ldx, int accumulate) {
    mm2_gemm<false, false>(dw, dy, x, n, k, m, lddy, ldx, accumulate);
}

// The operand copies of version 2 (see above): dst [rows, ld] bf16 from src [rows, cols] (fp32
// or bf16, any element offset). ld is a multiple of 8 and at least cols; dst 16-byte aligned.
template <class T>
__device__ __forceinline__ void mm_to_bf16_impl(__nv_bfloat16* __restrict__ dst,
                                                const T* __restrict__ src, unsigned rows,
                                                unsigned cols, unsigned ld) {
    const size_t per_row = ld / 8, chunks = (size_t)rows * per_row;
    const bool vec = sizeof(T) == 4 && cols % 4 == 0 && is_aligned(src, 16);
    for (size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x; q < chunks;
         q += (size_t)gridDim.x * blockDim.x) {
        const size_t r = q / per_row;
        const unsigned c0 = (unsigned)(q % per_row) * 8;
        const T* p = src + r * cols + c0;
        float v[8];
        if (vec && c0 + 8 <= cols) {
            const float4 a = mm_load4(p), b = mm_load4(p + 4);
            v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
            v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = c0 + e < cols ? mm_load1(p + e) : 0.0f;
        }
        const uint2 lo = pack_bf16x4(v[0], v[1], v[2], v[3]);
        const uint2 hi = pack_bf16x4(v[4], v[5], v[6], v[7]);
        *reinterpret_cast<uint4*>(dst + r * ld + c0) = make_uint4(lo.x, lo.y, hi.x, hi.y);
    }
}

extern "C" __global__ void __launch_bounds__(MM_THREADS)
matmul_to_bf16(__nv_bfloat16* __restrict__ dst, const float* __restrict__ src, unsigned int rows,
               unsigned int cols, unsigned int ld) {
    mm_to_bf16_impl(dst, src, rows, cols, ld);
}

extern "C" __global__ void __launch_bounds__(MM_THREADS)
matmul_to_bf16_from_bf16(__nv_bfloat16* __restrict__ dst, const __nv_bfloat16* __restrict__ src,
                         unsigned int rows, unsigned int cols, unsigned int ld) {
    mm_to_bf16_impl(dst, src, rows, cols, ld);
}
