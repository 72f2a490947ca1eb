// Micro-benchmark of emu.h's scheduling cost (run by hand; not part of run.sh): N launches of
// one 256-thread block whose threads each do 32 __syncthreads and nothing else. Compare:
//   g++ -std=c++20 -O2 -pthread -I cuda/emu cuda/emu/bench_sync.cpp -o /tmp/b && /tmp/b 2000
//   ... -DEMU_FIBER_UCONTEXT ... (fibers switched by glibc swapcontext)
//   ... -DEMU_OS_THREADS ...     (one std::thread per CUDA thread; use a smaller N)
#include "emu.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>

static void kernel(unsigned* sink) {
    for (int i = 0; i < 32; ++i) __syncthreads();
    if (threadIdx.x == 0) ++*sink;
}

int main(int argc, char** argv) {
    const unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 1000;
    unsigned sink = 0;
    launch({1}, {256}, [&] { kernel(&sink); });  // warm-up: stacks / first thread spawns
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < n; ++i) launch({1}, {256}, [&] { kernel(&sink); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#if defined(EMU_OS_THREADS)
    const char* mode = "OS threads";
#elif defined(EMU_FIBER_UCONTEXT)
    const char* mode = "fibers (swapcontext)";
#else
    const char* mode = "fibers (asm switch)";
#endif
    printf("%-22s %u launches of 256 threads x 32 __syncthreads: %.3f s, %.1f us/launch, %.1f ns per thread-barrier\n",
           mode, n, s, 1e6 * s / n, 1e9 * s / (n * 256.0 * 32.0));
    return sink != n + 1;
}
