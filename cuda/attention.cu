// Causal self-attention, flash style: forward and backward on the tensor cores (nvcuda::wmma,
// bf16 16x16x16 tiles, fp32 accumulators). The T x T score matrix is never stored; the forward
// keeps only lse, the log-sum-exp of each row of scaled scores, and the backward recomputes the
// probabilities from it.
//
// Layouts (fp32, row-major, caller-owned; no output aliases an input):
//   qkv   [B, T, 3D]  q at columns [0, D), k at [D, 2D), v at [2D, 3D); head h at columns
//                     h·dh .. (h+1)·dh of each third (D = H·dh)
//   z, dz [B, T, D]   (= [B, T, H, dh]) attention output per head, and its gradient
//   lse   [B, H, T]   lse_i = log Σ_{j≤i} exp(s_ij), s_ij = q_i·k_j / √dh (natural log)
//   delta [B, H, T]   Δ_i = bf16(dz_i)·z_i (backward scratch)
//   dqkv  [B, T, 3D]  gradient of qkv, all three thirds overwritten
//   shift [D]         optional ITI head shift added to every row of z (inference only)
// CPU reference: src/backend/cpu/attention.rs (`forward`, `backward`).
//
// Math. Forward: z_i = Σ_{j≤i} p_ij v_j with p_ij = exp(s_ij − lse_i). Backward:
//   dv_j = Σ_{i≥j} p_ij dz_i,  dp_ij = dz_i·v_j,  ds_ij = p_ij (dp_ij − Δ_i),
//   dq_i = (1/√dh) Σ_{j≤i} ds_ij k_j,  dk_j = (1/√dh) Σ_{i≥j} ds_ij q_i.
//
// Precision: q, k, v and dz are rounded to bf16 (round to nearest even) when staged into shared
// memory; P and dS are rounded to bf16 before they enter a product. Every product accumulates in
// fp32; scores, the online softmax statistics (running max m, running sum l), O, Δ and all
// gradients stay fp32.
//
// Tiling. Every kernel runs 1-D blocks of ATT_WARPS = 4 warps over tiles of 64 rows (ATT_BQ
// queries, ATT_BK keys); warp w owns rows 16w .. 16w+15 of its block's 64-row tile and the
// 16-row strips of every product on them. Tile operands live in shared memory as bf16 with a
// row stride padded by 8 elements (LDH = dh + 8, fewer bank conflicts); fp32 tiles use a stride
// of 64 + 4. wmma fragments are treated as opaque: whatever needs a row index (masking, softmax,
// rescaling, the epilogue) goes through shared memory, element by element, by lane: lane l of a
// warp handles row 16w + l/2, columns of parity l & 1 (the two lanes of a row combine their
// partial max and sum with one shuffle).
// Causality: a query tile qt needs key tiles 0..qt only (tiles are 64 x 64, so the last one is
// the diagonal tile), and on the diagonal tile warp w's 16 rows need only the key (or query)
// 16-column strips up to its own; strips that are entirely masked are not multiplied.
// Ragged T: rows at or past T are staged as zeros, masked out of every softmax/gradient, and
// never written.
//
// Determinism: no atomics; every sum (mma accumulation over tiles in increasing order, the two
// lanes' partial row sums) has a fixed order, so two launches give the same bits.
//
// Kernels (extern "C", template instances for dh ∈ {32, 64, 128}):
//   attention_fwd_d{DH}       grid (ceil(T/64), H, B): one query tile each, heaviest tiles first
//   attention_bwd_delta       grid (ceil(B·T·H / 4)): one warp per (b, t, h) row computes Δ
//   attention_bwd_dkdv_d{DH}  grid (ceil(T/64), H, B): one key tile each, loops over query tiles
//   attention_bwd_dq_d{DH}    grid (ceil(T/64), H, B): one query tile each, loops over key tiles
// Shared memory is dynamic (more than 48 KiB at dh = 128): the launcher sets the per-function
// limit to attn_*_smem(DH) bytes, computed by the same formulas as the launcher's Rust copy.
#include "common.cuh"
#include <mma.h>

#define ATT_WARPS 4
#define ATT_THREADS (32 * ATT_WARPS)
#define ATT_BQ 64
#define ATT_BK 64
#define ATT_LDS (ATT_BK + 4)  // fp32 score tile row stride (elements)
#define ATT_LDP (ATT_BK + 8)  // bf16 probability tile row stride (elements)

#ifdef __CUDACC__
#define ATT_DYN_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#else
// Host emulation (cuda/emu): blocks run one after another, so one static buffer serves all.
alignas(128) static unsigned char att_emu_smem[256 * 1024];
#define ATT_DYN_SMEM(name) unsigned char* name = att_emu_smem
#define __host__
#endif

namespace wm = nvcuda::wmma;
typedef __nv_bfloat16 bf16;
typedef wm::fragment<wm::matrix_a, 16, 16, 16, bf16, wm::row_major> FragA;
typedef wm::fragment<wm::matrix_b, 16, 16, 16, bf16, wm::row_major> FragBRow;
typedef wm::fragment<wm::matrix_b, 16, 16, 16, bf16, wm::col_major> FragBCol;
typedef wm::fragment<wm::accumulator, 16, 16, 16, float> FragC;

// Byte size of a region rounded up to 128 (each region starts 128-byte aligned; wmma needs 32).
__host__ __device__ constexpr unsigned att_align(unsigned bytes) { return (bytes + 127u) & ~127u; }
// bf16 [64, dh + 8] operand tile.
__host__ __device__ constexpr unsigned att_tile_bytes(unsigned dh) { return att_align(64u * (dh + 8u) * 2u); }
// fp32 [64, 64 + 4] score tile.
__host__ __device__ constexpr unsigned att_s_bytes() { return att_align(64u * ATT_LDS * 4u); }
// bf16 [64, 64 + 8] probability tile.
__host__ __device__ constexpr unsigned att_p_bytes() { return att_align(64u * ATT_LDP * 2u); }
// fp32 [64, dh + 4] output tile.
__host__ __device__ constexpr unsigned att_o_bytes(unsigned dh) { return att_align(64u * (dh + 4u) * 4u); }
__host__ __device__ constexpr unsigned att_max(unsigned a, unsigned b) { return a > b ? a : b; }

// Shared memory per kernel (bytes); the launcher mirrors these formulas.
// fwd: Q, K, V tiles, S, P, O, and 64 row factors.
__host__ __device__ constexpr unsigned attn_fwd_smem(unsigned dh) {
    return 3u * att_tile_bytes(dh) + att_s_bytes() + att_p_bytes() + att_o_bytes(dh) + att_align(64u * 4u);
}
// bwd (dkdv and dq): four operand tiles, two score tiles (reused by the epilogue), two
// probability tiles, lse and Δ of 64 rows.
__host__ __device__ constexpr unsigned attn_bwd_smem(unsigned dh) {
    return 4u * att_tile_bytes(dh) + att_max(2u * att_s_bytes(), att_o_bytes(dh)) + 2u * att_p_bytes() +
           2u * att_align(64u * 4u);
}

// Stages rows [0, nvalid) of a [64, DH] fp32 tile (row stride `rs` elements, from `src`) into
// shared memory as bf16 (RNE) with row stride DH + 8; rows nvalid..63 become zeros. Whole block;
// `vec` selects float4 loads (src 16-byte aligned and rs a multiple of 4).
template <int DH>
__device__ __forceinline__ void att_stage(bf16* __restrict__ dst, const float* __restrict__ src, size_t rs,
                                          int nvalid, bool vec) {
    constexpr int LDH = DH + 8;
    constexpr int C4 = DH / 4;
    // Unrolled by 4: four 16-byte loads in flight per thread before their stores.
#pragma unroll 4
    for (int idx = threadIdx.x; idx < 64 * C4; idx += ATT_THREADS) {
        const int r = idx / C4, c = (idx % C4) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < nvalid) {
            const float* p = src + (size_t)r * rs + c;
            if (vec) v = *reinterpret_cast<const float4*>(p);
            else v = make_float4(p[0], p[1], p[2], p[3]);
        }
        *reinterpret_cast<uint2*>(dst + r * LDH + c) = pack_bf16x4(v.x, v.y, v.z, v.w);
    }
}

// ---------------------------------------------------------------------------------------------
// Forward. Block (qt, h, b) computes rows q0 = 64·qt .. q0+63 of head h of sequence b:
//   for key tile kt = 0..qt:  S = Q·Kᵀ (warp w: its 16 rows × 64 keys, fp32 in shared memory);
//     per row (2 lanes): m' = max(m, max_j s_ij·scale over unmasked j), α = exp(m − m'),
//     p_ij = exp(s_ij·scale − m') (bf16 into P), l = α·l + Σ_j p_ij (fp32), O_row *= α;
//     O_w += P_w·V (accumulator loaded from and stored back to O in shared memory).
//   z_i = O_i / l_i (+ shift), lse_i = m_i + log l_i.
// Masked entries (j > i) are never read from S and contribute p = 0.
template <int DH>
__device__ __forceinline__ void attention_fwd_impl(float* __restrict__ z, float* __restrict__ lse,
                                                   const float* __restrict__ qkv,
                                                   const float* __restrict__ shift, int T, int H,
                                                   float scale) {
    constexpr int LDH = DH + 8, LDO = DH + 4, NT = DH / 16;
    ATT_DYN_SMEM(smem);
    bf16* Qs = reinterpret_cast<bf16*>(smem);
    bf16* Ks = reinterpret_cast<bf16*>(smem + att_tile_bytes(DH));
    bf16* Vs = reinterpret_cast<bf16*>(smem + 2 * att_tile_bytes(DH));
    float* Ss = reinterpret_cast<float*>(smem + 3 * att_tile_bytes(DH));
    bf16* Ps = reinterpret_cast<bf16*>(smem + 3 * att_tile_bytes(DH) + att_s_bytes());
    float* Os = reinterpret_cast<float*>(smem + 3 * att_tile_bytes(DH) + att_s_bytes() + att_p_bytes());
    float* rowf = reinterpret_cast<float*>(smem + 3 * att_tile_bytes(DH) + att_s_bytes() + att_p_bytes() +
                                           att_o_bytes(DH));

    const int qt = gridDim.x - 1 - blockIdx.x;  // heaviest (longest causal prefix) first
    const int h = blockIdx.y, b = blockIdx.z;
    const int q0 = qt * ATT_BQ;
    const int D = H * DH;
    const size_t rs = 3 * (size_t)D;
    const float* base = qkv + (size_t)b * T * rs + (size_t)h * DH;
    const bool vec = is_aligned(qkv, 16);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = warp * 16 + (lane >> 1);  // this lane's row of the tile
    const int half = lane & 1;
    const int i = q0 + r;

    att_stage<DH>(Qs, base + (size_t)q0 * rs, rs, min(ATT_BQ, T - q0), vec);
    for (int idx = threadIdx.x; idx < 64 * LDO; idx += ATT_THREADS) Os[idx] = 0.f;
    float m_run = -INFINITY, l_run = 0.f;
    __syncthreads();
    // The warp's 16 query rows stay in registers as NT matrix_a fragments for the whole loop.
    FragA qf[NT];
#pragma unroll
    for (int k = 0; k < NT; ++k) wm::load_matrix_sync(qf[k], Qs + warp * 16 * LDH + k * 16, LDH);

    for (int kt = 0; kt <= qt; ++kt) {
        const int k0 = kt * ATT_BK;
        const bool diag = kt == qt;
        __syncthreads();  // every warp is done with the previous K and V
        att_stage<DH>(Ks, base + (size_t)k0 * rs + D, rs, min(ATT_BK, T - k0), vec);
        att_stage<DH>(Vs, base + (size_t)k0 * rs + 2 * D, rs, min(ATT_BK, T - k0), vec);
        __syncthreads();
        // S_w = Q_w · Kᵀ over the key strips this warp needs (on the diagonal: strips 0..warp).
        const int nstrips = diag ? warp + 1 : ATT_BK / 16;
#pragma unroll
        for (int n = 0; n < nstrips; ++n) {
            FragC acc;
            wm::fill_fragment(acc, 0.f);
#pragma unroll
            for (int k = 0; k < NT; ++k) {
                FragBCol bk;  // (kk, nn) = K[n·16 + nn][k·16 + kk]
                wm::load_matrix_sync(bk, Ks + n * 16 * LDH + k * 16, LDH);
                wm::mma_sync(acc, qf[k], bk, acc);
            }
            wm::store_matrix_sync(Ss + warp * 16 * ATT_LDS + n * 16, acc, ATT_LDS, wm::mem_row_major);
        }
        __syncwarp();
        // Online softmax on this lane's half row (columns of parity `half`).
        float mx = -INFINITY;
        for (int c = half; c < ATT_BK; c += 2)
            if (k0 + c <= i) mx = fmaxf(mx, Ss[r * ATT_LDS + c] * scale);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_new = fmaxf(m_run, mx);  // finite: key 0 is unmasked for every row
        const float alpha = expf(m_run - m_new);
        float sum = 0.f;
        for (int c = half; c < ATT_BK; c += 2) {
            const float p = (k0 + c <= i) ? expf(Ss[r * ATT_LDS + c] * scale - m_new) : 0.f;
            Ps[r * ATT_LDP + c] = f32_to_bf16(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l_run = l_run * alpha + sum;
        m_run = m_new;
        for (int c = half; c < DH; c += 2) Os[r * LDO + c] *= alpha;
        __syncwarp();
        // O_w += P_w · V (on the diagonal the key strips past the warp's own are all zero).
        // P_w's strips are loaded once into registers (constant indices after unrolling).
        FragA pf[ATT_BK / 16];
#pragma unroll
        for (int k = 0; k < ATT_BK / 16; ++k)
            if (k < nstrips) wm::load_matrix_sync(pf[k], Ps + warp * 16 * ATT_LDP + k * 16, ATT_LDP);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            FragC acc;
            wm::load_matrix_sync(acc, Os + warp * 16 * LDO + n * 16, LDO, wm::mem_row_major);
#pragma unroll
            for (int k = 0; k < ATT_BK / 16; ++k) {
                if (k >= nstrips) break;
                FragBRow bv;
                wm::load_matrix_sync(bv, Vs + k * 16 * LDH + n * 16, LDH);
                wm::mma_sync(acc, pf[k], bv, acc);
            }
            wm::store_matrix_sync(Os + warp * 16 * LDO + n * 16, acc, LDO, wm::mem_row_major);
        }
        __syncwarp();
    }
    // Epilogue: row factors 1/l, lse; then the warp writes its 16 rows, float4 by float4.
    if (half == 0) {
        rowf[r] = 1.0f / l_run;
        if (i < T) lse[((size_t)b * H + h) * T + i] = m_run + logf(l_run);
    }
    __syncwarp();
    float* zb = z + (size_t)b * T * D + (size_t)h * DH;
    const bool zvec = is_aligned(z, 16) && (shift == nullptr || is_aligned(shift, 16));
    for (int idx = lane; idx < 16 * (DH / 4); idx += 32) {
        const int rr = warp * 16 + idx / (DH / 4), c = (idx % (DH / 4)) * 4;
        if (q0 + rr >= T) continue;
        const float f = rowf[rr];
        // Explicit roundings (no fused multiply-add): the shifted z is exactly fl(z + shift).
        float4 o = make_float4(__fmul_rn(Os[rr * LDO + c], f), __fmul_rn(Os[rr * LDO + c + 1], f),
                               __fmul_rn(Os[rr * LDO + c + 2], f), __fmul_rn(Os[rr * LDO + c + 3], f));
        if (shift != nullptr) {
            const float* s = shift + h * DH + c;
            o.x = __fadd_rn(o.x, s[0]);
            o.y = __fadd_rn(o.y, s[1]);
            o.z = __fadd_rn(o.z, s[2]);
            o.w = __fadd_rn(o.w, s[3]);
        }
        float* dst = zb + (size_t)(q0 + rr) * D + c;
        if (zvec) {
            *reinterpret_cast<float4*>(dst) = o;
        } else {
            dst[0] = o.x;
            dst[1] = o.y;
            dst[2] = o.z;
            dst[3] = o.w;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward preprocessing: Δ[b, h, t] = Σ_c bf16(dz[b, t, h, c]) · z[b, t, h, c] (fp32), one warp per
// (b, t, h) row: lane l sums c = l, l + 32, ... in order, then warp_sum (fixed butterfly).
__device__ __forceinline__ void attention_bwd_delta_impl(float* __restrict__ delta, const float* __restrict__ dz,
                                                         const float* __restrict__ z, unsigned B, unsigned T,
                                                         unsigned H, unsigned dh) {
    const size_t row = (size_t)blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);  // = (b·T + t)·H + h
    const unsigned lane = threadIdx.x & 31;
    if (row >= (size_t)B * T * H) return;  // whole warps leave; no barrier below
    const float* a = dz + row * dh;
    const float* c = z + row * dh;
    float s = 0.f;
    // dz is rounded to bf16 here as the dP product stages it, so that Δ_i = Σ_j P_ij·dP_ij
    // holds for the same dz and each row of dS = P ⊙ (dP − Δ) sums to (nearly) zero; with the
    // fp32 dz, T = 1 gave dq = dk ≈ 1e-3·‖dqkv‖ where the exact answer is 0.
    for (unsigned k = lane; k < dh; k += 32) s += bf16_to_f32(f32_to_bf16(a[k])) * c[k];
    s = warp_sum(s);
    if (lane == 0) {
        const size_t h = row % H, bt = row / H, t = bt % T, b = bt / T;
        delta[(b * H + h) * T + t] = s;
    }
}

// Shared-memory layout of both backward kernels: four bf16 operand tiles X0..X3, the fp32 score
// tiles S0 and S1 (the epilogue reuses them as one [64, dh + 4] fp32 tile E), the bf16
// probability tiles P0 and P1, and 64-row vectors lse and Δ.
template <int DH>
struct AttBwdSmem {
    bf16 *X0, *X1, *X2, *X3, *P0, *P1;
    float *S0, *S1, *E, *lse, *delta;
    __device__ __forceinline__ explicit AttBwdSmem(unsigned char* smem) {
        constexpr unsigned TB = att_tile_bytes(DH);
        constexpr unsigned SB = att_max(2u * att_s_bytes(), att_o_bytes(DH));
        X0 = reinterpret_cast<bf16*>(smem);
        X1 = reinterpret_cast<bf16*>(smem + TB);
        X2 = reinterpret_cast<bf16*>(smem + 2 * TB);
        X3 = reinterpret_cast<bf16*>(smem + 3 * TB);
        S0 = reinterpret_cast<float*>(smem + 4 * TB);
        S1 = reinterpret_cast<float*>(smem + 4 * TB + att_s_bytes());
        E = S0;
        P0 = reinterpret_cast<bf16*>(smem + 4 * TB + SB);
        P1 = reinterpret_cast<bf16*>(smem + 4 * TB + SB + att_p_bytes());
        lse = reinterpret_cast<float*>(smem + 4 * TB + SB + 2 * att_p_bytes());
        delta = reinterpret_cast<float*>(smem + 4 * TB + SB + 2 * att_p_bytes() + att_align(64u * 4u));
    }
};

// Writes the warp's 16 rows of a [64, DH] fp32 result held in accumulators `acc` (one per
// 16-column strip) to rows row0 + 16w .. of `dst` (row stride rs), times `mul`, rows ≥ T
// skipped. Goes through E (this warp's 16 rows of it); the caller synchronises before E is
// reused from the score tiles.
template <int DH>
__device__ __forceinline__ void att_write_rows(float* __restrict__ dst, size_t rs, const FragC* acc, float* E,
                                               int row0, int T, float mul, bool vec) {
    constexpr int LDO = DH + 4;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int n = 0; n < DH / 16; ++n)
        wm::store_matrix_sync(E + warp * 16 * LDO + n * 16, acc[n], LDO, wm::mem_row_major);
    __syncwarp();
    for (int idx = lane; idx < 16 * (DH / 4); idx += 32) {
        const int rr = warp * 16 + idx / (DH / 4), c = (idx % (DH / 4)) * 4;
        if (row0 + rr >= T) continue;
        const float* e = E + rr * LDO + c;
        float* d = dst + (size_t)(row0 + rr) * rs + c;
        if (vec) {
            *reinterpret_cast<float4*>(d) = make_float4(e[0] * mul, e[1] * mul, e[2] * mul, e[3] * mul);
        } else {
            d[0] = e[0] * mul;
            d[1] = e[1] * mul;
            d[2] = e[2] * mul;
            d[3] = e[3] * mul;
        }
    }
    __syncwarp();  // E is rewritten by the next call
}

// ---------------------------------------------------------------------------------------------
// The two products both backward kernels start a tile with, for this warp's 16 staged rows
// (X0 and X1 rows 16w ..) against the 16-row strips n0 <= n < n1 of the other tile (X2, X3):
//   S0[16w.., 16n..] = X0_w · X2_nᵀ,   S1[16w.., 16n..] = X1_w · X3_nᵀ   (fp32, [64, ATT_LDS]).
// dK/dV: X0 = K, X1 = V, X2 = Q, X3 = dZ gives Sᵀ and dPᵀ; dQ: X0 = Q, X1 = dZ, X2 = K, X3 = V
// gives S and dP. B fragments are col_major: (kk, nn) = X[n·16 + nn][k·16 + kk].
template <int DH>
__device__ __forceinline__ void att_bwd_two_products(const AttBwdSmem<DH>& sm, int warp, int n0, int n1) {
    constexpr int LDH = DH + 8, NT = DH / 16;
#pragma unroll
    for (int n = n0; n < n1; ++n) {
        FragC s, dp;
        wm::fill_fragment(s, 0.f);
        wm::fill_fragment(dp, 0.f);
#pragma unroll
        for (int k = 0; k < NT; ++k) {
            FragA a;
            FragBCol b;
            wm::load_matrix_sync(a, sm.X0 + warp * 16 * LDH + k * 16, LDH);
            wm::load_matrix_sync(b, sm.X2 + n * 16 * LDH + k * 16, LDH);
            wm::mma_sync(s, a, b, s);
            wm::load_matrix_sync(a, sm.X1 + warp * 16 * LDH + k * 16, LDH);
            wm::load_matrix_sync(b, sm.X3 + n * 16 * LDH + k * 16, LDH);
            wm::mma_sync(dp, a, b, dp);
        }
        wm::store_matrix_sync(sm.S0 + warp * 16 * ATT_LDS + n * 16, s, ATT_LDS, wm::mem_row_major);
        wm::store_matrix_sync(sm.S1 + warp * 16 * ATT_LDS + n * 16, dp, ATT_LDS, wm::mem_row_major);
    }
}

// Backward, dK and dV. Block (kt, h, b) owns keys k0 = 64·kt .. k0+63 (warp w: keys k0+16w ..);
// K and V stay staged; for each query tile qt = kt .. last (the earlier ones are fully masked):
//   Sᵀ_w = K_w·Qᵀ, dPᵀ_w = V_w·dZᵀ (fp32, shared memory);
//   per element (key j, query i), unmasked when i < T and j ≤ i:
//     pᵀ_ji = exp(sᵀ_ji·scale − lse_i), dsᵀ_ji = pᵀ_ji (dpᵀ_ji − Δ_i)   (both to bf16);
//   dV_w += Pᵀ_w·dZ, dK_w += dSᵀ_w·Q   (accumulators in registers across all query tiles).
// Finally dk = scale·dK and dv = dV into the k and v thirds of dqkv.
// X0 = K, X1 = V, X2 = Q, X3 = dZ; S0 = Sᵀ, S1 = dPᵀ; P0 = Pᵀ, P1 = dSᵀ.
template <int DH>
__device__ __forceinline__ void attention_bwd_dkdv_impl(float* __restrict__ dqkv, const float* __restrict__ dz,
                                                        const float* __restrict__ qkv,
                                                        const float* __restrict__ lse,
                                                        const float* __restrict__ delta, int T, int H,
                                                        float scale) {
    constexpr int LDH = DH + 8, NT = DH / 16;
    ATT_DYN_SMEM(smem);
    AttBwdSmem<DH> sm(smem);
    const int kt = blockIdx.x;  // low key tiles see the most query tiles: launched first
    const int h = blockIdx.y, b = blockIdx.z;
    const int k0 = kt * ATT_BK;
    const int D = H * DH;
    const size_t rs = 3 * (size_t)D;
    const float* base = qkv + (size_t)b * T * rs + (size_t)h * DH;
    const float* dzb = dz + (size_t)b * T * D + (size_t)h * DH;
    const float* lseb = lse + ((size_t)b * H + h) * T;
    const float* delb = delta + ((size_t)b * H + h) * T;
    const bool vec = is_aligned(qkv, 16) && is_aligned(dz, 16);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = warp * 16 + (lane >> 1);  // this lane's key row of the tile
    const int half = lane & 1;
    const int j = k0 + r;

    att_stage<DH>(sm.X0, base + (size_t)k0 * rs + D, rs, min(ATT_BK, T - k0), vec);
    att_stage<DH>(sm.X1, base + (size_t)k0 * rs + 2 * D, rs, min(ATT_BK, T - k0), vec);
    FragC dk[NT], dv[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
        wm::fill_fragment(dk[n], 0.f);
        wm::fill_fragment(dv[n], 0.f);
    }
    const int nqt = (T + ATT_BQ - 1) / ATT_BQ;
    for (int qt = kt; qt < nqt; ++qt) {
        const int q0 = qt * ATT_BQ;
        const bool diag = qt == kt;
        const int nq = min(ATT_BQ, T - q0);
        __syncthreads();  // every warp is done with the previous Q, dZ, lse, Δ
        att_stage<DH>(sm.X2, base + (size_t)q0 * rs, rs, nq, vec);
        att_stage<DH>(sm.X3, dzb + (size_t)q0 * D, D, nq, vec);
        for (int t = threadIdx.x; t < ATT_BQ; t += ATT_THREADS) {
            sm.lse[t] = t < nq ? lseb[q0 + t] : 0.f;
            sm.delta[t] = t < nq ? delb[q0 + t] : 0.f;
        }
        __syncthreads();
        // Query strips this warp needs: on the diagonal, strips warp .. 3 (earlier ones have
        // i < j for all of the warp's keys).
        const int n0 = diag ? warp : 0;
        att_bwd_two_products<DH>(sm, warp, n0, ATT_BQ / 16);
        __syncwarp();
        for (int c = half; c < ATT_BQ; c += 2) {
            const int i = q0 + c;
            float p = 0.f, ds = 0.f;
            if (i < T && j <= i) {
                p = expf(sm.S0[r * ATT_LDS + c] * scale - sm.lse[c]);
                ds = p * (sm.S1[r * ATT_LDS + c] - sm.delta[c]);
            }
            sm.P0[r * ATT_LDP + c] = f32_to_bf16(p);
            sm.P1[r * ATT_LDP + c] = f32_to_bf16(ds);
        }
        __syncwarp();
        // dV_w += Pᵀ_w · dZ, dK_w += dSᵀ_w · Q over the query strips n0..3.
#pragma unroll
        for (int k = n0; k < ATT_BQ / 16; ++k) {
            FragA pa, da;
            wm::load_matrix_sync(pa, sm.P0 + warp * 16 * ATT_LDP + k * 16, ATT_LDP);
            wm::load_matrix_sync(da, sm.P1 + warp * 16 * ATT_LDP + k * 16, ATT_LDP);
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                FragBRow bm;
                wm::load_matrix_sync(bm, sm.X3 + k * 16 * LDH + n * 16, LDH);
                wm::mma_sync(dv[n], pa, bm, dv[n]);
                wm::load_matrix_sync(bm, sm.X2 + k * 16 * LDH + n * 16, LDH);
                wm::mma_sync(dk[n], da, bm, dk[n]);
            }
        }
    }
    __syncthreads();  // E overlays S0/S1, which other warps may still read
    const bool ovec = is_aligned(dqkv, 16);
    float* gb = dqkv + (size_t)b * T * rs + (size_t)h * DH;
    att_write_rows<DH>(gb + D, rs, dk, sm.E, k0, T, scale, ovec);
    att_write_rows<DH>(gb + 2 * D, rs, dv, sm.E, k0, T, 1.0f, ovec);
}

// ---------------------------------------------------------------------------------------------
// Backward, dQ. Block (qt, h, b) owns queries q0 = 64·qt .. q0+63 (warp w: rows q0+16w ..);
// Q and dZ stay staged; for each key tile kt = 0..qt:
//   S_w = Q_w·Kᵀ, dP_w = dZ_w·Vᵀ (fp32, shared memory);
//   p_ij = exp(s_ij·scale − lse_i), ds_ij = p_ij (dp_ij − Δ_i) for i < T, j ≤ i (bf16);
//   dQ_w += dS_w·K (accumulators in registers).
// Finally dq = scale·dQ into the q third of dqkv.
// X0 = Q, X1 = dZ, X2 = K, X3 = V; S0 = S, S1 = dP; P1 = dS.
template <int DH>
__device__ __forceinline__ void attention_bwd_dq_impl(float* __restrict__ dqkv, const float* __restrict__ dz,
                                                      const float* __restrict__ qkv, const float* __restrict__ lse,
                                                      const float* __restrict__ delta, int T, int H, float scale) {
    constexpr int LDH = DH + 8, NT = DH / 16;
    ATT_DYN_SMEM(smem);
    AttBwdSmem<DH> sm(smem);
    const int qt = gridDim.x - 1 - blockIdx.x;  // heaviest first
    const int h = blockIdx.y, b = blockIdx.z;
    const int q0 = qt * ATT_BQ;
    const int nq = min(ATT_BQ, T - q0);
    const int D = H * DH;
    const size_t rs = 3 * (size_t)D;
    const float* base = qkv + (size_t)b * T * rs + (size_t)h * DH;
    const bool vec = is_aligned(qkv, 16) && is_aligned(dz, 16);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = warp * 16 + (lane >> 1);  // this lane's query row of the tile
    const int half = lane & 1;
    const int i = q0 + r;

    att_stage<DH>(sm.X0, base + (size_t)q0 * rs, rs, nq, vec);
    att_stage<DH>(sm.X1, dz + (size_t)b * T * D + (size_t)h * DH + (size_t)q0 * D, D, nq, vec);
    for (int t = threadIdx.x; t < ATT_BQ; t += ATT_THREADS) {
        sm.lse[t] = t < nq ? lse[((size_t)b * H + h) * T + q0 + t] : 0.f;
        sm.delta[t] = t < nq ? delta[((size_t)b * H + h) * T + q0 + t] : 0.f;
    }
    FragC dq[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) wm::fill_fragment(dq[n], 0.f);
    for (int kt = 0; kt <= qt; ++kt) {
        const int k0 = kt * ATT_BK;
        const bool diag = kt == qt;
        __syncthreads();  // every warp is done with the previous K and V (and the staging above)
        att_stage<DH>(sm.X2, base + (size_t)k0 * rs + D, rs, min(ATT_BK, T - k0), vec);
        att_stage<DH>(sm.X3, base + (size_t)k0 * rs + 2 * D, rs, min(ATT_BK, T - k0), vec);
        __syncthreads();
        const int nstrips = diag ? warp + 1 : ATT_BK / 16;
        att_bwd_two_products<DH>(sm, warp, 0, nstrips);
        __syncwarp();
        const float l_i = sm.lse[r], d_i = sm.delta[r];
        for (int c = half; c < ATT_BK; c += 2) {
            float ds = 0.f;
            if (i < T && k0 + c <= i) {
                const float p = expf(sm.S0[r * ATT_LDS + c] * scale - l_i);
                ds = p * (sm.S1[r * ATT_LDS + c] - d_i);
            }
            sm.P1[r * ATT_LDP + c] = f32_to_bf16(ds);
        }
        __syncwarp();
#pragma unroll
        for (int k = 0; k < nstrips; ++k) {
            FragA a;
            wm::load_matrix_sync(a, sm.P1 + warp * 16 * ATT_LDP + k * 16, ATT_LDP);
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                FragBRow bk;
                wm::load_matrix_sync(bk, sm.X2 + k * 16 * LDH + n * 16, LDH);
                wm::mma_sync(dq[n], a, bk, dq[n]);
            }
        }
    }
    __syncthreads();  // E overlays S0/S1
    att_write_rows<DH>(dqkv + (size_t)b * T * rs + (size_t)h * DH, rs, dq, sm.E, q0, T, scale,
                       is_aligned(dqkv, 16));
}

// ---------------------------------------------------------------------------------------------
// Entry points. Arguments: T, H as ints (the launcher checks they fit), scale = 1/√dh.
#define ATT_INSTANCES(DH)                                                                                 \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 2)                                        \
        attention_fwd_d##DH(float* z, float* lse, const float* qkv, const float* shift, int T, int H,    \
                            float scale) {                                                              \
        attention_fwd_impl<DH>(z, lse, qkv, shift, T, H, scale);                                         \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 2)                                        \
        attention_bwd_dkdv_d##DH(float* dqkv, const float* dz, const float* qkv, const float* lse,       \
                                 const float* delta, int T, int H, float scale) {                       \
        attention_bwd_dkdv_impl<DH>(dqkv, dz, qkv, lse, delta, T, H, scale);                             \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 2)                                        \
        attention_bwd_dq_d##DH(float* dqkv, const float* dz, const float* qkv, const float* lse,         \
                               const float* delta, int T, int H, float scale) {                         \
        attention_bwd_dq_impl<DH>(dqkv, dz, qkv, lse, delta, T, H, scale);                               \
    }

ATT_INSTANCES(32)
ATT_INSTANCES(64)
ATT_INSTANCES(128)

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_bwd_delta(float* delta, const float* dz, const float* z, unsigned B, unsigned T, unsigned H,
                        unsigned dh) {
    attention_bwd_delta_impl(delta, dz, z, B, T, H, dh);
}
