// Host emulation of the few CUDA features the kernels in cuda/*.cu use, so their indexing,
// vector/scalar paths and barrier/shuffle patterns can be checked on a machine without a GPU
// (cuda/emu/run.sh). fp32 maths is the host's (-ffp-contract=off), so this checks logic, not the
// GPU's rounding or speed. Blocks are 1-D (blockDim.x threads, at most 1024) and run one after
// another, in x, then y, then z order of blockIdx; `__shared__` is `static` (one block at a time).
//
// API (both modes): launch(grid, block, f) runs the callable f() once per CUDA thread, with
// threadIdx, blockIdx, blockDim and gridDim set; __syncthreads(), __syncwarp(mask) and
// __shfl_xor_sync(mask, v, offset) (v of at most 8 bytes) work as on the GPU for full warps
// (the mask is ignored: every lane of the warp takes part). Launches from several OS threads
// run one at a time (a process-wide mutex: gridDim, blockDim and the scheduler are shared), each
// on its caller's thread; a launch from inside a kernel aborts.
//
// Two execution modes, chosen at compile time:
//
// * Fibers (default). A block's threads all run on the ONE OS thread that called launch(), each
//   as a fiber: a coroutine with its own stack (EMU_FIBER_STACK bytes, default 256 KiB, mmap'd
//   with a PROT_NONE guard page below it so an overflow faults instead of corrupting a
//   neighbour; stacks are allocated on first use and reused by every later block and launch).
//   A fiber runs without interruption until it calls __syncthreads, __syncwarp or a shuffle
//   (which waits at its warp's barrier twice: write own value, barrier, read the partner's,
//   barrier), or returns from the kernel. Then it switches back to the scheduler, a loop on the
//   launching thread's own stack that resumes ready fibers in FIFO order. Every arrival at a
//   barrier yields; the arrival that completes it (all threads of the block for __syncthreads,
//   all lanes of the warp for the warp barrier) makes every waiter, itself included, ready
//   again in thread order. So between two barriers a thread's code runs to completion before
//   the next thread starts: the interleaving is fixed, which makes every run deterministic but
//   also hides most races (a missing barrier only shows when a reader runs before its writer).
//   Setting EMU_FIBER_ORDER=reverse in the environment (read once, at the first launch) starts
//   each block and releases each barrier in descending thread order instead, which exposes the
//   other half of such missing-barrier bugs; run.sh runs every check both ways. For a real race
//   hunt (ThreadSanitizer) compile with -DEMU_OS_THREADS.
//   AddressSanitizer works with the fibers: built with -fsanitize=address, every switch is
//   announced to it (__sanitizer_start_switch_fiber / __sanitizer_finish_switch_fiber: the
//   scheduler before and after it resumes a fiber, a fiber at its first entry, before and after
//   each suspension, and before its last switch, which passes a null fake-stack save so ASan
//   drops that fiber's fake stack), so it knows the current stack's bounds and fake stack: an
//   out-of-bounds access to a heap buffer, a `__shared__` array or a kernel's local array is
//   reported with the fiber's backtrace (run.sh --asan). With
//   ASAN_OPTIONS=detect_stack_use_after_return=1 (off by default in GCC's libasan) each fiber
//   gets a fresh fake stack per block, an mmap and munmap each: much slower. The ucontext
//   fallback below is annotated too, but ASan's swapcontext interceptor clears the shadow of the
//   stack it switches to, so there a local array's overflow after a barrier goes unseen.
//   threadIdx, blockIdx, my_warp and my_block are plain globals: the scheduler sets them before
//   it resumes a fiber, so each fiber sees its own (every barrier goes through an opaque call,
//   so the compiler reloads them after it; a copy in a local lives on the fiber's own stack).
//   The switch (emu_fiber_switch below) is a dozen x86-64 instructions: it saves what the SysV
//   ABI makes callee-saved (rbx, rbp, r12-r15, the MXCSR and the x87 control word) on the
//   current stack, stores the stack pointer, loads the other one and restores the same set
//   from it; no system call (glibc's swapcontext makes a sigprocmask call on every switch).
//   Other targets, or -DEMU_FIBER_UCONTEXT, use getcontext/makecontext/swapcontext instead.
//   Cost per thread and __syncthreads (bench_sync.cpp, 256 threads, on a busy 2-core x86-64):
//   about 30 ns with this switch, 560 ns with swapcontext, 4-8 us with OS threads. The deepest
//   fiber stack the checks in run.sh use is about 21 KiB (check_attention, -O1).
//   Deadlock: when no fiber is ready but some have not returned (threads that returned while
//   others wait at a barrier, or threads waiting at different barriers), the block can never
//   finish; on a GPU that is undefined behaviour. The emulator then prints the launch site, the
//   block index and which threads returned / wait where, and aborts. Limits: the kernel must not
//   throw (std::terminate), must fit its stack (an overflow is a SIGSEGV on the guard page), and
//   a CPU shadow stack (CET), if a build enables one, would reject the switch.
//
// * OS threads (-DEMU_OS_THREADS): each block runs as blockDim.x std::threads, __syncthreads is a
//   block-wide std::barrier and each warp has its own std::barrier; threadIdx and friends are
//   thread_local. The interleaving is the OS scheduler's, so races can show (nondeterministically),
//   and ThreadSanitizer works; but a barrier costs hundreds of context switches and every block
//   spawns blockDim.x threads, and a deadlocked block hangs instead of aborting.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <source_location>
#include <utility>
#include <vector>
#ifdef EMU_OS_THREADS
#include <barrier>
#include <thread>
#else
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__) && !defined(EMU_FIBER_UCONTEXT)
#define EMU_FIBER_UCONTEXT
#endif
#ifdef EMU_FIBER_UCONTEXT
#include <ucontext.h>
#endif
// AddressSanitizer (GCC defines __SANITIZE_ADDRESS__, Clang has the feature test): every switch
// is announced to it, so that it knows which stack (and which fake stack, for
// detect_stack_use_after_return) is current. See "AddressSanitizer" in the header comment.
#if defined(__SANITIZE_ADDRESS__)
#define EMU_FIBER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_FIBER_ASAN 1
#endif
#endif
#ifdef EMU_FIBER_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#endif
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
struct dim3v { unsigned x = 1, y = 1, z = 1; };
inline dim3v blockDim, gridDim;
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
using std::min; using std::max;
// cp.async (cuda/common.cuh's cp_async16 / cp_async_commit / cp_async_wait): each copy reads its
// source when issued but writes its destination only when a cp_async_wait covers its group, so
// a kernel that reads the destination too early reads stale data here too. On a GPU a copy may
// also land as soon as it is issued, so a kernel that refills a buffer other threads are still
// reading is just as wrong: with EMU_CP_ASYNC=eager in the environment (read once) each copy
// also writes its destination when issued, which exposes that (run.sh runs the checks that use
// cp.async both ways). State per thread index (blocks run one at a time); a kernel must wait for
// all its groups before it returns (cp_async_wait<0>), or the copies left over land in the next
// block's waits.
namespace emu_detail {
struct CpAsyncCopy { void* dst; unsigned char data[16]; };
struct CpAsyncState {
    std::vector<CpAsyncCopy> open;                 // issued since the last commit
    std::vector<std::vector<CpAsyncCopy>> groups;  // committed, oldest first
};
inline CpAsyncState& cp_async_state(unsigned tid) {
    static CpAsyncState states[1024];
    return states[tid];
}
inline bool cp_async_eager() {
    static const bool eager = [] {
        const char* v = getenv("EMU_CP_ASYNC");
        return v != nullptr && strcmp(v, "eager") == 0;
    }();
    return eager;
}
}  // namespace emu_detail

inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }

namespace emu_detail {
inline std::mutex launch_mutex;          // one launch at a time in the process
inline thread_local bool in_kernel = false;  // set on threads that run (or schedule) kernel code
// Aborts on a launch from kernel code (dynamic parallelism is not emulated).
inline void check_not_nested(const std::source_location& at) {
    if (!in_kernel) return;
    fprintf(stderr, "emu: launch at %s:%u from inside a kernel: not supported\n", at.file_name(), (unsigned)at.line());
    abort();
}
// Aborts unless `b` is a block shape the emulation supports (1-D, 1..1024 threads).
inline void check_block(dim3v b, const std::source_location& at) {
    if (b.y == 1 && b.z == 1 && b.x >= 1 && b.x <= 1024) return;
    fprintf(stderr, "emu: launch at %s:%u: block (%u,%u,%u) unsupported: blocks must be 1-D with 1..1024 threads\n",
            at.file_name(), (unsigned)at.line(), b.x, b.y, b.z);
    abort();
}
}  // namespace emu_detail

#ifdef EMU_OS_THREADS
// ---------------------------------------------------------------------------------------------
// OS-thread mode: one std::thread per CUDA thread.
inline thread_local dim3v threadIdx, blockIdx;
struct Warp {
    explicit Warp(unsigned lanes) : bar(lanes) {}
    std::barrier<> bar;
    alignas(8) unsigned char buf[32 * 8];
};
inline thread_local Warp* my_warp;
inline thread_local std::barrier<>* my_block;
inline void __emu_warp_barrier() { my_warp->bar.arrive_and_wait(); }
inline void __syncthreads() { my_block->arrive_and_wait(); }
template <class F>
void launch(dim3v g, dim3v b, F f, std::source_location at = std::source_location::current()) {
    emu_detail::check_block(b, at);
    emu_detail::check_not_nested(at);
    std::lock_guard<std::mutex> lock(emu_detail::launch_mutex);
    gridDim = g; blockDim = b;
    unsigned nt = b.x;
    for (unsigned z = 0; z < g.z; ++z) for (unsigned y = 0; y < g.y; ++y) for (unsigned x = 0; x < g.x; ++x) {
        std::barrier<> blk(nt);
        std::vector<std::unique_ptr<Warp>> warps;
        for (unsigned w = 0; w * 32 < nt; ++w) warps.emplace_back(new Warp(min(32u, nt - w * 32)));
        std::vector<std::thread> ths;
        for (unsigned t = 0; t < nt; ++t) ths.emplace_back([&, t] {
            emu_detail::in_kernel = true;
            threadIdx = {t, 0, 0}; blockIdx = {x, y, z};
            my_warp = warps[t / 32].get(); my_block = &blk;
            f();
        });
        for (auto& th : ths) th.join();
    }
}
#else
// ---------------------------------------------------------------------------------------------
// Fiber mode: every thread of a block is a fiber on the launching OS thread.
#ifndef EMU_FIBER_STACK
#define EMU_FIBER_STACK (256u * 1024u)
#endif

#ifndef EMU_FIBER_UCONTEXT
// void emu_fiber_switch(void** save_sp, void* next_sp)
// Suspends the caller: pushes the callee-saved state onto the current stack and stores the
// stack pointer in *save_sp (rdi); then resumes the context whose stack pointer is next_sp (rsi)
// by popping the same state from it and returning into it. Caller-saved registers need no
// saving: the compiler already treats them as clobbered by this (opaque) call. Frame, from the
// saved stack pointer up: [MXCSR (4 B) | x87 control word (2 B) | pad], r15, r14, r13, r12,
// rbx, rbp, return address; a fresh fiber's frame is built by emu_detail::fresh_frame to match.
// It is a weak, hidden symbol in its own COMDAT section so that every translation unit that
// includes this header can carry a copy and the linker keeps one.
asm(R"(
    .pushsection .text.emu_fiber_switch,"axG",@progbits,emu_fiber_switch,comdat
    .weak emu_fiber_switch
    .hidden emu_fiber_switch
    .type emu_fiber_switch, @function
    .p2align 4
emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)          # SSE rounding mode / exception masks
    fnstcw 4(%rsp)          # x87 precision / rounding control
    movq %rsp, (%rdi)       # suspended here: *save_sp = stack pointer
    movq %rsi, %rsp         # switch stacks
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret                     # into the resumed context (or a fresh fiber's fiber_main)
    .size emu_fiber_switch, .-emu_fiber_switch
    .popsection
)");
extern "C" __attribute__((visibility("hidden"))) void emu_fiber_switch(void** save_sp, void* next_sp);
#endif

namespace emu_detail {
enum class FiberState : unsigned char { Ready, AtBlockBarrier, AtWarpBarrier, Returned };

// One CUDA thread: its stack (lo..hi, the guard page just below lo) and its saved context.
struct Fiber {
    char* lo = nullptr;
    char* hi = nullptr;
#ifdef EMU_FIBER_UCONTEXT
    ucontext_t ctx;
#else
    void* sp = nullptr;  // saved stack pointer while suspended
#endif
#ifdef EMU_FIBER_ASAN
    void* fake_stack = nullptr;  // ASan's fake stack of this fiber while it is suspended
#endif
    FiberState state = FiberState::Returned;
};
}  // namespace emu_detail

// One warp's barrier and shuffle buffer.
struct Warp {
    unsigned first = 0;    // thread index of lane 0
    unsigned lanes = 0;    // threads in this warp (32 except a partial last warp)
    unsigned arrived = 0;  // lanes waiting at the barrier now
    alignas(8) unsigned char buf[32 * 8];
};
// The block barrier.
struct BlockBarrier {
    unsigned threads = 0;   // blockDim.x
    unsigned arrived = 0;   // threads waiting at __syncthreads now
    unsigned returned = 0;  // threads that returned from the kernel
};
// Per-fiber registers: set by the scheduler before it resumes a fiber.
inline dim3v threadIdx, blockIdx;
inline Warp* my_warp;
inline BlockBarrier* my_block;

namespace emu_detail {
inline Fiber fibers[1024];
inline Warp warps[32];
inline BlockBarrier block;
inline unsigned ready[1024];           // FIFO ring of fibers to resume; each is in it at most once
inline unsigned ready_head = 0, ready_count = 0;
inline unsigned current = 0;           // the fiber running now (valid inside a fiber only)
inline bool reverse_order = false;     // EMU_FIBER_ORDER=reverse
inline void (*kernel_call)(void*);     // the launch's callable, type-erased
inline void* kernel_arg;
#ifdef EMU_FIBER_UCONTEXT
inline ucontext_t scheduler_ctx;
#else
inline void* scheduler_sp;             // the scheduler's stack pointer while a fiber runs
#endif

#ifdef EMU_FIBER_ASAN
// AddressSanitizer's fiber protocol: __sanitizer_start_switch_fiber(&save, bottom, size) just
// before a switch (it stores the leaving context's fake stack in `save`, or destroys it when
// `save` is null: the context is leaving for good, and names the stack being entered);
// __sanitizer_finish_switch_fiber(save, &old_bottom, &old_size) first thing after the switch,
// on the stack entered (it reinstates that context's fake stack, null on a first entry, and
// reports the stack left). Fibers are only ever entered from the scheduler, so the stack a fiber
// reports leaving is the scheduler's: kept here for the fiber's switch back.
inline void* scheduler_fake_stack;     // the scheduler's fake stack while a fiber runs
inline const void* scheduler_stack_bottom;
inline size_t scheduler_stack_size;
inline void asan_enter_fiber(const Fiber& f) {          // scheduler, before it switches to f
    __sanitizer_start_switch_fiber(&scheduler_fake_stack, f.lo, size_t(f.hi - f.lo));
}
inline void asan_back_in_scheduler() {                  // scheduler, after a fiber switched back
    __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
}
inline void asan_leave_fiber(void** fake_stack_save) {  // fiber, before it switches back (null: for good)
    __sanitizer_start_switch_fiber(fake_stack_save, scheduler_stack_bottom, scheduler_stack_size);
}
inline void asan_in_fiber(void* fake_stack) {           // fiber, after it was entered (null: first entry)
    __sanitizer_finish_switch_fiber(fake_stack, &scheduler_stack_bottom, &scheduler_stack_size);
}
#endif

inline void push_ready(unsigned t) {
    ready[(ready_head + ready_count++) & 1023] = t;
}
// Marks threads [first, first + n) ready, in ascending (or, reversed, descending) order.
inline void release(unsigned first, unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
        unsigned t = reverse_order ? first + n - 1 - i : first + i;
        fibers[t].state = FiberState::Ready;
        push_ready(t);
    }
}

// Saves the running fiber and resumes the scheduler; returns when the scheduler resumes it.
// `last`: the fiber has returned from the kernel and will never be resumed.
inline void suspend(bool last = false) {
    Fiber& f = fibers[current];
#ifdef EMU_FIBER_ASAN
    asan_leave_fiber(last ? nullptr : &f.fake_stack);
#else
    (void)last;
#endif
#ifdef EMU_FIBER_UCONTEXT
    swapcontext(&f.ctx, &scheduler_ctx);
#else
    emu_fiber_switch(&f.sp, scheduler_sp);
#endif
#ifdef EMU_FIBER_ASAN
    asan_in_fiber(f.fake_stack);
#endif
}

// Body of every fiber: the kernel, then a final switch away (a returned fiber is never resumed;
// its next use starts again from a fresh frame). noexcept: a throwing kernel terminates.
[[noreturn]] inline void fiber_main() noexcept {
#ifdef EMU_FIBER_ASAN
    asan_in_fiber(nullptr);  // first entry: no fake stack yet
#endif
    kernel_call(kernel_arg);
    fibers[current].state = FiberState::Returned;
    block.returned++;
    suspend(true);
    __builtin_trap();
}

#ifndef EMU_FIBER_UCONTEXT
// The frame emu_fiber_switch expects, laid out at the top of fiber f's stack so that its `ret`
// enters fiber_main with the stack aligned as after a call (rsp ≡ 8 mod 16). The word above
// fiber_main's address is its (null) return address and rbp starts null: backtraces stop there.
inline void* fresh_frame(const Fiber& f, uint64_t control) {
    void** sp = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(f.hi) & ~uintptr_t(15));
    *--sp = nullptr;                                      // fiber_main's return address
    *--sp = reinterpret_cast<void*>(&fiber_main);         // emu_fiber_switch returns here
    for (int r = 0; r < 6; ++r) *--sp = nullptr;          // rbp, rbx, r12, r13, r14, r15
    --sp;
    memcpy(sp, &control, sizeof control);                 // MXCSR, x87 control word
    return sp;
}
#endif

// Gives fibers [0, n) a stack each (first use only: later blocks and launches reuse them).
inline void ensure_stacks(unsigned n) {
    static const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    static const size_t stack = (EMU_FIBER_STACK + page - 1) / page * page;
    for (unsigned t = 0; t < n; ++t) {
        if (fibers[t].lo) continue;
        void* p = mmap(nullptr, page + stack, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) {
            perror("emu: mapping a fiber stack");
            abort();
        }
        fibers[t].lo = static_cast<char*>(p) + page;
        fibers[t].hi = fibers[t].lo + stack;
    }
}

// Prints the threads of the block in state `s` as ranges ("0-31 64 96-127").
inline void print_threads(FiberState s) {
    unsigned n = block.threads;
    for (unsigned t = 0; t < n;) {
        if (fibers[t].state != s) { ++t; continue; }
        unsigned e = t;
        while (e + 1 < n && fibers[e + 1].state == s) ++e;
        if (e == t) fprintf(stderr, " %u", t);
        else fprintf(stderr, " %u-%u", t, e);
        t = e + 1;
    }
}
[[noreturn]] inline void report_deadlock(const std::source_location& at) {
    unsigned n = block.threads, at_block = 0, at_warp = 0;
    for (unsigned t = 0; t < n; ++t) {
        at_block += fibers[t].state == FiberState::AtBlockBarrier;
        at_warp += fibers[t].state == FiberState::AtWarpBarrier;
    }
    fprintf(stderr,
            "emu: deadlock in the kernel launched at %s:%u (in %s), grid (%u,%u,%u), block %u threads: "
            "block (%u,%u,%u) can never finish: %u thread(s) returned, %u wait at __syncthreads, %u at "
            "__syncwarp/__shfl_xor_sync (a barrier that some live thread of the block or warp never "
            "reaches is undefined behaviour on a GPU)\n",
            at.file_name(), (unsigned)at.line(), at.function_name(), gridDim.x, gridDim.y, gridDim.z, n,
            blockIdx.x, blockIdx.y, blockIdx.z, block.returned, at_block, at_warp);
    const std::pair<FiberState, const char*> groups[] = {
        {FiberState::Returned, "returned:"},
        {FiberState::AtBlockBarrier, "waiting at __syncthreads:"},
        {FiberState::AtWarpBarrier, "waiting at __syncwarp/__shfl_xor_sync:"}};
    for (auto [s, label] : groups) {
        bool any = false;
        for (unsigned t = 0; t < n; ++t) any |= fibers[t].state == s;
        if (!any) continue;
        fprintf(stderr, "emu:   threads %s", label);
        print_threads(s);
        fprintf(stderr, "\n");
    }
    abort();
}

// Runs one block (blockIdx already set) to completion.
inline void run_block(unsigned n, const std::source_location& at) {
    uint64_t control = 0;
#ifndef EMU_FIBER_UCONTEXT
    uint32_t mxcsr;
    uint16_t x87;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(x87));
    control = mxcsr | uint64_t(x87) << 32;
#endif
    block = BlockBarrier{n, 0, 0};
    my_block = &block;
    for (unsigned w = 0; w * 32 < n; ++w) {
        warps[w].first = w * 32;
        warps[w].lanes = min(32u, n - w * 32);
        warps[w].arrived = 0;
    }
    ready_head = ready_count = 0;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = fibers[t];
#ifdef EMU_FIBER_UCONTEXT
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.lo;
        f.ctx.uc_stack.ss_size = f.hi - f.lo;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main), 0);
#else
        f.sp = fresh_frame(f, control);
#endif
    }
    release(0, n);
    while (ready_count) {
        unsigned t = ready[ready_head];
        ready_head = (ready_head + 1) & 1023;
        ready_count--;
        current = t;
        threadIdx = {t, 0, 0};
        my_warp = &warps[t >> 5];
#ifdef EMU_FIBER_ASAN
        asan_enter_fiber(fibers[t]);
#endif
#ifdef EMU_FIBER_UCONTEXT
        swapcontext(&scheduler_ctx, &fibers[t].ctx);
#else
        emu_fiber_switch(&scheduler_sp, fibers[t].sp);
#endif
#ifdef EMU_FIBER_ASAN
        asan_back_in_scheduler();
#endif
    }
    if (block.returned != n) report_deadlock(at);
}

// EMU_FIBER_ORDER=reverse, read at the first launch.
inline bool order_reversed() {
    static const bool r = [] {
        const char* o = getenv("EMU_FIBER_ORDER");
        return o && strcmp(o, "reverse") == 0;
    }();
    return r;
}

template <class F> void call(void* f) { (*static_cast<F*>(f))(); }
}  // namespace emu_detail

// The warp barrier: every lane of the calling thread's warp must arrive before any goes on.
inline void __emu_warp_barrier() {
    using namespace emu_detail;
    fibers[current].state = FiberState::AtWarpBarrier;
    Warp& w = *my_warp;
    if (++w.arrived == w.lanes) {
        w.arrived = 0;
        release(w.first, w.lanes);
    }
    suspend();
}
inline void __syncthreads() {
    using namespace emu_detail;
    fibers[current].state = FiberState::AtBlockBarrier;
    if (++block.arrived == block.threads) {
        block.arrived = 0;
        release(0, block.threads);
    }
    suspend();
}

template <class F>
void launch(dim3v g, dim3v b, F f, std::source_location at = std::source_location::current()) {
    using namespace emu_detail;
    check_block(b, at);
    check_not_nested(at);
    std::lock_guard<std::mutex> lock(launch_mutex);
    in_kernel = true;  // fibers run on this thread
    reverse_order = order_reversed();
    gridDim = g; blockDim = b;
    ensure_stacks(b.x);
    kernel_call = &call<F>;
    kernel_arg = &f;
    for (unsigned z = 0; z < g.z; ++z) for (unsigned y = 0; y < g.y; ++y) for (unsigned x = 0; x < g.x; ++x) {
        blockIdx = {x, y, z};
        run_block(b.x, at);
    }
    in_kernel = false;
}
#endif

// Both modes: the shuffle writes its value, waits for the whole warp, reads the partner's, and
// waits again so that no lane overwrites the buffer before every lane has read it.
inline void __syncwarp(unsigned = 0xffffffffu) { __emu_warp_barrier(); }
template <class T> T __shfl_xor_sync(unsigned, T v, int off) {
    static_assert(sizeof(T) <= 8, "emulated shuffles carry at most 8 bytes");
    T* b = reinterpret_cast<T*>(my_warp->buf);
    int lane = threadIdx.x & 31;
    b[lane] = v;
    __emu_warp_barrier();
    T r = b[lane ^ off];
    __emu_warp_barrier();
    return r;
}

// Both modes: cp.async (see emu_detail::CpAsyncState above).
inline void cp_async16(void* dst, const void* src, unsigned bytes) {
    if (bytes > 16) {
        fprintf(stderr, "emu: cp_async16 of %u bytes (at most 16)\n", bytes);
        abort();
    }
    if ((reinterpret_cast<uintptr_t>(dst) | (bytes ? reinterpret_cast<uintptr_t>(src) : 0)) & 15) {
        fprintf(stderr, "emu: cp_async16 with a misaligned address (dst %p, src %p)\n", dst, src);
        abort();
    }
    emu_detail::CpAsyncCopy c{dst, {}};
    if (bytes) memcpy(c.data, src, bytes);
    if (emu_detail::cp_async_eager()) memcpy(dst, c.data, 16);
    emu_detail::cp_async_state(threadIdx.x).open.push_back(c);
}
inline void cp_async_commit() {
    auto& s = emu_detail::cp_async_state(threadIdx.x);
    s.groups.push_back(std::move(s.open));
    s.open.clear();
}
template <int N> void cp_async_wait() {
    auto& s = emu_detail::cp_async_state(threadIdx.x);
    while (s.groups.size() > (size_t)N) {
        for (const auto& c : s.groups.front()) memcpy(c.dst, c.data, 16);
        s.groups.erase(s.groups.begin());
    }
}
