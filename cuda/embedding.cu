// Token embedding: forward gather and deterministic backward scatter-add.
//
// Layouts (row-major fp32, all buffers owned by the caller):
//   wte   [V, d]  embedding table (a span of the flat parameter buffer)
//   ids   [n]     u32 token ids, one per position (row) of the batch
//   out   [n, d]  forward output, out[i, :] = wte[ids[i], :]
//   dout  [n, d]  gradient of `out`
//   dwte  [V, d]  gradient of the table, ACCUMULATED: dwte[ids[i], :] += dout[i, :]
//
// CPU references: src/backend/cpu/embedding.rs `embedding_fwd`, `embedding_bwd`.
//
// Determinism of the backward without float atomics: the positions are bucketed by token id
// on the host when the batch is staged (the ids come from the host anyway; see
// `EmbeddingBwdPlan` in src/backend/cuda/embedding.rs). The plan lists the distinct ids, the
// start of each id's bucket, and the positions of each bucket in increasing order. One thread
// owns one (id, column) element and adds its positions' values in that order, so every element
// of dwte sees exactly the additions of the CPU loop (`for i in 0..n`), in the same order, with
// IEEE round-to-nearest adds (__fadd_rn, nothing to contract): the result is bit-identical to
// the CPU reference and from run to run.
#include "common.cuh"

#define EMB_THREADS 128

// Forward gather. Grid-stride over rows (block b handles rows b, b + gridDim.x, ...), the
// block's threads over the row's columns: float4 when d % 4 == 0 and both out and wte are
// 16-byte aligned, else one float at a time. An id >= vocab (the caller checks ids, so this
// should not happen) reads nothing and writes NaN over the row.
extern "C" __global__ void __launch_bounds__(EMB_THREADS)
embedding_fwd(float* __restrict__ out, const unsigned int* __restrict__ ids,
              const float* __restrict__ wte, unsigned int n, unsigned int d, unsigned int vocab) {
    const bool vec = (d % 4 == 0) && is_aligned(out, 16) && is_aligned(wte, 16);
    for (unsigned int row = blockIdx.x; row < n; row += gridDim.x) {
        const unsigned int id = ids[row];
        float* o = out + (size_t)row * d;
        if (id >= vocab) {
            for (unsigned int c = threadIdx.x; c < d; c += blockDim.x) o[c] = __int_as_float(0x7fc00000);
            continue;
        }
        const float* w = wte + (size_t)id * d;
        if (vec) {
            const unsigned int d4 = d / 4;
            float4* o4 = reinterpret_cast<float4*>(o);
            const float4* w4 = reinterpret_cast<const float4*>(w);
            for (unsigned int c = threadIdx.x; c < d4; c += blockDim.x) o4[c] = w4[c];
        } else {
            for (unsigned int c = threadIdx.x; c < d; c += blockDim.x) o[c] = w[c];
        }
    }
}

// Backward scatter-add from a host-computed plan:
//   bucket_ids   [n_buckets]      distinct ids, each < vocab (checked on the host)
//   bucket_start [n_buckets + 1]  bucket b holds positions[bucket_start[b] .. bucket_start[b+1])
//   positions    [n]              positions grouped by id, increasing within each bucket
// Launch: grid (n_buckets, any), EMB_THREADS threads. Block row b handles bucket b; its
// threads stride over the column groups c of row bucket_ids[b] of dwte (float4s when d % 4 == 0
// and dwte, dout are 16-byte aligned, else single floats), any grid.y covering them all.
// For each column group: acc = dwte[id, c]; acc += dout[p, c] for p in the
// bucket in order; dwte[id, c] = acc. No two threads write the same element.
extern "C" __global__ void __launch_bounds__(EMB_THREADS)
embedding_bwd(float* __restrict__ dwte, const float* __restrict__ dout,
              const unsigned int* __restrict__ bucket_ids,
              const unsigned int* __restrict__ bucket_start,
              const unsigned int* __restrict__ positions, unsigned int n_buckets, unsigned int d,
              unsigned int vocab) {
    const unsigned int b = blockIdx.x;
    if (b >= n_buckets) return;
    const unsigned int id = bucket_ids[b];
    if (id >= vocab) return;
    const unsigned int start = bucket_start[b];
    const unsigned int end = bucket_start[b + 1];
    const unsigned int c0 = blockIdx.y * blockDim.x + threadIdx.x;
    const unsigned int cstride = gridDim.y * blockDim.x;
    const bool vec = (d % 4 == 0) && is_aligned(dwte, 16) && is_aligned(dout, 16);
    if (vec) {
        const unsigned int d4 = d / 4;
        for (unsigned int c = c0; c < d4; c += cstride) {
            float4* g4 = reinterpret_cast<float4*>(dwte) + (size_t)id * d4 + c;
            const float4* x4 = reinterpret_cast<const float4*>(dout) + c;
            float4 acc = *g4;
            // Unrolling lets the loads of a hot id's rows be issued ahead; the adds stay in order.
#pragma unroll 4
            for (unsigned int k = start; k < end; ++k) {
                const float4 x = x4[(size_t)positions[k] * d4];
                acc.x = __fadd_rn(acc.x, x.x);
                acc.y = __fadd_rn(acc.y, x.y);
                acc.z = __fadd_rn(acc.z, x.z);
                acc.w = __fadd_rn(acc.w, x.w);
            }
            *g4 = acc;
        }
    } else {
        for (unsigned int c = c0; c < d; c += cstride) {
            float* g = dwte + (size_t)id * d + c;
            float acc = *g;
#pragma unroll 4
            for (unsigned int k = start; k < end; ++k) acc = __fadd_rn(acc, dout[(size_t)positions[k] * d + c]);
            *g = acc;
        }
    }
}
