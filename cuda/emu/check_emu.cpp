// The emulator itself (emu.h), in whichever mode it is compiled: barrier and shuffle semantics,
// per-thread registers across barriers, partial warps, 3-D grids, big per-thread arrays,
// launches from two OS threads at once (they must take turns); every
// expected value is a closed formula of the thread index. Run with one argument it instead
// runs a kernel that must abort, and run.sh checks that it does, with the expected message:
//   deadlock   thread 0 returns while the others wait at __syncthreads (fiber mode only; OS
//              threads hang)
//   nested     a kernel that launches a kernel (dynamic parallelism is not emulated)
//   misaligned a float4 load from an address 4 bytes off (-fsanitize=alignment must catch it
//              and report it from a fiber's stack just as from an OS thread's)
// Build and run: cuda/emu/run.sh (needs g++ with C++20).
#include "emu.h"
#include "check.h"
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

// Each round every thread publishes a value in shared memory, waits, and reads its neighbour's;
// a second barrier keeps the next round's writes away from this round's reads. Counts wrong reads.
static void rounds_kernel(unsigned rounds, unsigned* wrong) {
    __shared__ unsigned cell[1024];
    const unsigned t = threadIdx.x, n = blockDim.x;
    for (unsigned r = 0; r < rounds; ++r) {
        cell[t] = t * 7 + r * 1000 + blockIdx.x * 100000;
        __syncthreads();
        const unsigned u = (t + 1 + r) % n;
        if (cell[u] != u * 7 + r * 1000 + blockIdx.x * 100000) wrong[blockIdx.x * n + t]++;
        __syncthreads();
    }
}

// Butterfly sums of doubles over each warp, lane l holding l + 32·warp + 0.5: every lane must get
// Σ (l + 32w + 0.5) over the warp's lanes. Also a single xor exchange of ints.
static void shuffle_kernel(double* sums, int* partners) {
    const unsigned t = threadIdx.x;
    double x = t + 0.5;
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    sums[t] = x;
    partners[t] = __shfl_xor_sync(0xffffffffu, (int)t * 3, 5);
}

// threadIdx and blockIdx read after barriers must still be the thread's own.
static void registers_kernel(unsigned* wrong) {
    const unsigned t = threadIdx.x, bx = blockIdx.x, by = blockIdx.y, bz = blockIdx.z;
    __syncthreads();
    __syncwarp();
    __syncthreads();
    const unsigned id = ((bz * gridDim.y + by) * gridDim.x + bx) * blockDim.x + t;
    if (threadIdx.x != t || blockIdx.x != bx || blockIdx.y != by || blockIdx.z != bz) wrong[id]++;
    wrong[id] += 1000;  // every (block, thread) must run exactly once
}

// A partial last warp (blockDim 40: lanes 0..7 of warp 1): __syncwarp waits for its 8 lanes only.
static void partial_warp_kernel(unsigned* out) {
    __shared__ unsigned v[64];
    const unsigned t = threadIdx.x;
    v[t] = t * t;
    __syncwarp();
    const unsigned w0 = t & ~31u, lanes = blockDim.x - w0 < 32 ? blockDim.x - w0 : 32;
    out[t] = v[w0 + (t - w0 + 1) % lanes];
}

// A 64 KiB per-thread array (kernels keep arrays in "registers") must survive barriers.
static void big_stack_kernel(unsigned* wrong) {
    unsigned a[16384];
    for (unsigned i = 0; i < 16384; ++i) a[i] = i ^ (threadIdx.x * 2654435761u);
    __syncthreads();
    for (unsigned i = 0; i < 16384; ++i) wrong[threadIdx.x] += a[i] != (i ^ (threadIdx.x * 2654435761u));
}

// Counts threads that see a gridDim.x other than `want` or a blockIdx.x outside it.
static void grid_kernel(unsigned want, unsigned* wrong) {
    __syncthreads();
    if (gridDim.x != want || blockIdx.x >= want || blockDim.x != 64) ++wrong[threadIdx.x];
}

static void deadlock_kernel() {
    if (threadIdx.x == 0) return;
    __syncthreads();
}

static void misaligned_kernel(const float* p, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(p + 1);
    out[threadIdx.x] = v.x;
}

int main(int argc, char** argv) {
    if (argc == 2 && strcmp(argv[1], "deadlock") == 0) {
        launch({2}, {64}, [&] { deadlock_kernel(); });
        printf("deadlock kernel finished\n");
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "nested") == 0) {
        launch({1}, {32}, [&] { launch({1}, {32}, [] {}); });
        printf("nested launch finished\n");
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "misaligned") == 0) {
        alignas(16) float buf[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        float out[32];
        launch({1}, {32}, [&] { misaligned_kernel(buf, out); });
        printf("misaligned kernel finished\n");
        return 0;
    }
    {
        const unsigned blocks = 3, n = 256, rounds = 32;
        std::vector<unsigned> wrong(blocks * n, 0);
        launch({blocks}, {n}, [&] { rounds_kernel(rounds, wrong.data()); });
        unsigned bad = 0;
        for (unsigned w : wrong) bad += w;
        report("__syncthreads: 3 blocks x 256 threads x 32 rounds (wrong reads)", bad, 0.5);
    }
    {
        const unsigned n = 96;
        std::vector<double> sums(n, -1);
        std::vector<int> partners(n, -1);
        launch({1}, {n}, [&] { shuffle_kernel(sums.data(), partners.data()); });
        double e = 0;
        for (unsigned t = 0; t < n; ++t) {
            const unsigned w0 = t & ~31u;
            const double want = 32.0 * w0 + 31.0 * 32.0 / 2 + 16.0;  // Σ_{l<32} (w0 + l + 0.5)
            e = std::max(e, std::fabs(sums[t] - want));
            e = std::max(e, std::fabs(double(partners[t] - int(t ^ 5) * 3)));
        }
        report("__shfl_xor_sync: butterfly warp sums and xor-5 exchange (max err)", e, 1e-12);
    }
    {
        const dim3v g{3, 2, 2};
        const unsigned n = 64, total = g.x * g.y * g.z * n;
        std::vector<unsigned> wrong(total, 0);
        launch(g, {n}, [&] { registers_kernel(wrong.data()); });
        unsigned bad = 0;
        for (unsigned w : wrong) bad += w != 1000;
        report("threadIdx/blockIdx across barriers, grid 3x2x2 (bad threads)", bad, 0.5);
    }
    {
        const unsigned n = 40;
        std::vector<unsigned> out(n, ~0u);
        launch({1}, {n}, [&] { partial_warp_kernel(out.data()); });
        unsigned bad = 0;
        for (unsigned t = 0; t < n; ++t) {
            const unsigned w0 = t & ~31u, lanes = t < 32 ? 32 : 8, u = w0 + (t - w0 + 1) % lanes;
            bad += out[t] != u * u;
        }
        report("__syncwarp in a partial last warp, block 40 (wrong reads)", bad, 0.5);
    }
    {
        const unsigned n = 128;
        std::vector<unsigned> wrong(n, 0);
        launch({2}, {n}, [&] { big_stack_kernel(wrong.data()); });
        unsigned bad = 0;
        for (unsigned w : wrong) bad += w;
        report("64 KiB per-thread array across __syncthreads (wrong words)", bad, 0.5);
    }
    {
        // Each OS thread's kernels see their own launch shape only if launches take turns.
        std::vector<unsigned> wrong_a(64, 0), wrong_b(64, 0);
        std::thread a([&] { for (int i = 0; i < 20; ++i) launch({5}, {64}, [&] { grid_kernel(5, wrong_a.data()); }); });
        std::thread b([&] { for (int i = 0; i < 20; ++i) launch({7}, {64}, [&] { grid_kernel(7, wrong_b.data()); }); });
        a.join();
        b.join();
        unsigned bad = 0;
        for (unsigned t = 0; t < 64; ++t) bad += wrong_a[t] + wrong_b[t];
        report("launches from two OS threads at once (wrong launch shapes)", bad, 0.5);
    }
    return finish();
}
