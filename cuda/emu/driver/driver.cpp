// A host emulation of the part of the CUDA driver API (libcuda) that cudarc and the baddata
// executor use, built as a shared library named libcuda.so.1 (cuda/emu/driver/build.sh). Put its
// folder first on LD_LIBRARY_PATH and the unchanged Rust code (tests/gpu*.rs, `train --device
// cuda`) opens "CUDA device 0: baddata host emulator", allocates, copies and launches; every
// launch runs the kernel of cuda/*.cu compiled for the host through cuda/emu (emu.h, mma.h).
//
// What it checks that the kernel checks (cuda/emu/check*.cpp) cannot: the executor's glue —
// which kernel each op launches, its grid and block, the argument order and values, buffer
// offsets and alignment (the kernel files are built with -fsanitize=alignment), dynamic shared
// memory limits, copies past an allocation's end — over whole training steps.
//
// What it does not check: speed, the GPU's rounding inside a tensor-core product, races that a
// serial host schedule hides, the argument count and widths of a launch (the driver receives
// an untyped `void**`; each trampoline reads what its kernel's signature says), static shared
// memory and register limits. It is not a GPU: a test that passes here has not passed on one.
//
// Memory model: "device" memory is host memory (256-byte aligned, like cuMemAlloc), so a
// CUdeviceptr is a host address; every call is synchronous and serialised by one mutex, so
// streams and events carry no ordering of their own.
#include "registry.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

extern "C" {
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct EmuCtx* CUcontext;
typedef struct EmuModule* CUmodule;
typedef struct EmuFunction* CUfunction;
typedef struct EmuStream* CUstream;
typedef struct EmuEvent* CUevent;
typedef void (*CUhostFn)(void* userData);
}

namespace {

// CUresult values (cuda.h).
constexpr CUresult OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3,
                   INVALID_DEVICE = 101, INVALID_IMAGE = 200, INVALID_CONTEXT = 201, INVALID_HANDLE = 400,
                   NOT_FOUND = 500, NOT_READY = 600, LAUNCH_OUT_OF_RESOURCES = 701, NOT_SUPPORTED = 801;

// What the emulated device reports: an H100's shape (the launchers size grids from the SM
// count and pick shared-memory limits from the compute capability), and 80 GiB of "memory"
// that is only a budget: allocations are real host memory.
constexpr int SM_COUNT = 132, CC_MAJOR = 9, CC_MINOR = 0;
constexpr size_t TOTAL_MEM = size_t(80) << 30;
constexpr int SMEM_DEFAULT = 48 * 1024, SMEM_OPTIN = 232448;
const char* const DEVICE_NAME = "baddata host emulator (cuda/emu, not a GPU)";

struct Registry {
    std::vector<EmuKernel> kernels;
};
Registry& registry() {
    static Registry r;
    return r;
}

std::recursive_mutex& big_lock() {
    static std::recursive_mutex m;
    return m;
}

bool initialised = false;
std::map<uintptr_t, size_t>& allocations() {  // start -> bytes (device and pinned host)
    static std::map<uintptr_t, size_t> m;
    return m;
}
size_t device_bytes = 0;

}  // namespace

struct EmuCtx {
    int refs = 0;
};
struct EmuModule {
    std::vector<const EmuKernel*> kernels;
};
struct EmuFunction {
    const EmuKernel* kernel;
    int max_dynamic_smem = SMEM_DEFAULT;
};
struct EmuStream {};
struct EmuEvent {
    std::chrono::steady_clock::time_point at;
};

namespace {
EmuCtx primary_ctx;
thread_local CUcontext current_ctx = nullptr;

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "cuda/emu driver: %s\n", what);
    std::abort();
}

// The allocation holding [p, p + n), or nullptr.
const std::pair<const uintptr_t, size_t>* find_alloc(uintptr_t p, size_t n) {
    auto& m = allocations();
    auto it = m.upper_bound(p);
    if (it == m.begin()) return nullptr;
    --it;
    if (p < it->first || p + n > it->first + it->second) return nullptr;
    return &*it;
}

// Copies and memsets must stay inside one allocation on the device side.
CUresult check_range(const char* op, CUdeviceptr p, size_t n) {
    if (n == 0) return OK;
    if (!find_alloc(uintptr_t(p), n)) {
        std::fprintf(stderr, "cuda/emu driver: %s of %zu bytes at %#llx is not inside one allocation\n", op, n, p);
        return INVALID_VALUE;
    }
    return OK;
}

CUresult alloc(void** out, size_t bytes, bool device) {
    if (bytes == 0) return INVALID_VALUE;
    if (device && device_bytes + bytes > TOTAL_MEM) return OUT_OF_MEMORY;
    void* p = nullptr;
    // Exactly `bytes` (no rounding up), so that under AddressSanitizer (EMU_ASAN=1) a kernel
    // touching the first byte past a buffer is caught.
    if (posix_memalign(&p, 256, bytes) != 0) return OUT_OF_MEMORY;
    allocations()[uintptr_t(p)] = bytes;
    if (device) device_bytes += bytes;
    *out = p;
    return OK;
}

CUresult release(uintptr_t p, bool device) {
    if (p == 0) return OK;
    auto& m = allocations();
    auto it = m.find(p);
    if (it == m.end()) return INVALID_VALUE;
    if (device) device_bytes -= it->second;
    m.erase(it);
    std::free(reinterpret_cast<void*>(p));
    return OK;
}

}  // namespace

void emu_register(const EmuKernel* kernels, size_t n) {
    for (size_t i = 0; i < n; ++i) registry().kernels.push_back(kernels[i]);
}

void emu_check_pointer(const char* kernel, int arg, const void* p) {
    if (p == nullptr || find_alloc(uintptr_t(p), 1)) return;
    std::fprintf(stderr, "cuda/emu driver: %s argument %d = %p points into no allocation\n", kernel, arg, p);
    std::abort();
}

#define LOCK std::lock_guard<std::recursive_mutex> guard(big_lock())
#define NEED_INIT \
    if (!initialised) return NOT_INITIALIZED

extern "C" {

CUresult cuInit(unsigned flags) {
    LOCK;
    if (flags != 0) return INVALID_VALUE;
    initialised = true;
    return OK;
}

CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case OK: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case NOT_READY: *s = "CUDA_ERROR_NOT_READY"; break;
        case LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; return INVALID_VALUE;
    }
    return OK;
}

CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

CUresult cuDeviceGetCount(int* n) {
    NEED_INIT;
    *n = 1;
    return OK;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    NEED_INIT;
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return OK;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    if (len <= 0) return INVALID_VALUE;
    std::snprintf(name, size_t(len), "%s", DEVICE_NAME);
    return OK;
}

CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    std::memset(uuid, 0xEE, 16);
    return OK;
}
CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    *bytes = TOTAL_MEM;
    return OK;
}

// Attribute numbers from cuda.h's CUdevice_attribute; any other reads as 0.
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    switch (attr) {
        case 1: *v = 1024; break;           // MAX_THREADS_PER_BLOCK
        case 2: *v = 1024; break;           // MAX_BLOCK_DIM_X
        case 3: case 4: *v = 1024; break;   // MAX_BLOCK_DIM_Y, _Z (the emulator runs 1-D blocks)
        case 5: *v = 0x7fffffff; break;     // MAX_GRID_DIM_X
        case 6: case 7: *v = 65535; break;  // MAX_GRID_DIM_Y, _Z
        case 8: *v = SMEM_DEFAULT; break;   // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: *v = 32; break;            // WARP_SIZE
        case 16: *v = SM_COUNT; break;      // MULTIPROCESSOR_COUNT
        case 75: *v = CC_MAJOR; break;      // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = CC_MINOR; break;      // COMPUTE_CAPABILITY_MINOR
        case 81: *v = 233472; break;        // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 97: *v = SMEM_OPTIN; break;    // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: *v = 0; break;            // MEMORY_POOLS_SUPPORTED: plain cuMemAlloc
        default: *v = 0;
    }
    return OK;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    LOCK;
    NEED_INIT;
    if (d != 0) return INVALID_DEVICE;
    ++primary_ctx.refs;
    *c = &primary_ctx;
    return OK;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    LOCK;
    if (d != 0) return INVALID_DEVICE;
    if (primary_ctx.refs > 0) --primary_ctx.refs;
    return OK;
}

CUresult cuCtxSetCurrent(CUcontext c) {
    current_ctx = c;
    return OK;
}

CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = current_ctx;
    return OK;
}

CUresult cuCtxSynchronize() { return OK; }

CUresult cuStreamCreate(CUstream* s, unsigned) {
    *s = new EmuStream();
    return OK;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned f, int) { return cuStreamCreate(s, f); }
CUresult cuStreamDestroy_v2(CUstream s) {
    delete s;
    return OK;
}
CUresult cuStreamSynchronize(CUstream) { return OK; }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) { return OK; }
CUresult cuStreamIsCapturing(CUstream, int* status) {
    *status = 0;
    return OK;
}

CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = new EmuEvent();
    return OK;
}
CUresult cuEventDestroy_v2(CUevent e) {
    delete e;
    return OK;
}
CUresult cuEventRecord(CUevent e, CUstream) {
    e->at = std::chrono::steady_clock::now();
    return OK;
}
CUresult cuEventSynchronize(CUevent) { return OK; }
CUresult cuEventQuery(CUevent) { return OK; }
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

CUresult cuLaunchHostFunc(CUstream, CUhostFn f, void* data) {
    f(data);
    return OK;
}

// ---- memory ---------------------------------------------------------------------------------

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCK;
    *free_bytes = TOTAL_MEM - device_bytes;
    *total = TOTAL_MEM;
    return OK;
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    NEED_INIT;
    void* q = nullptr;
    CUresult r = alloc(&q, bytes, true);
    if (r == OK) *p = CUdeviceptr(uintptr_t(q));
    return r;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return cuMemAlloc_v2(p, bytes); }

CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    return release(uintptr_t(p), true);
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return cuMemFree_v2(p); }

CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    LOCK;
    return alloc(p, bytes, false);
}
CUresult cuMemFreeHost(void* p) {
    LOCK;
    return release(uintptr_t(p), false);
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCK;
    if (CUresult r = check_range("cuMemcpyHtoD", dst, n)) return r;
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    return OK;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream) {
    return cuMemcpyHtoD_v2(dst, src, n);
}

CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    LOCK;
    if (CUresult r = check_range("cuMemcpyDtoH", src, n)) return r;
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream) {
    return cuMemcpyDtoH_v2(dst, src, n);
}

CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    LOCK;
    if (CUresult r = check_range("cuMemcpyDtoD (source)", src, n)) return r;
    if (CUresult r = check_range("cuMemcpyDtoD (destination)", dst, n)) return r;
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    return OK;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
    return cuMemcpyDtoD_v2(dst, src, n);
}

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    LOCK;
    if (CUresult r = check_range("cuMemsetD8", dst, n)) return r;
    std::memset(reinterpret_cast<void*>(dst), v, n);
    return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) { return cuMemsetD8_v2(dst, v, n); }

// ---- modules and launches -------------------------------------------------------------------

// A fatbin (what build.rs embeds and cudarc passes here) starts with a 16-byte header: magic
// 0xBA55ED50, version (u16), header size (u16), payload size (u64). The module holds every
// registered kernel whose name appears in the image, so a launcher that looks a kernel up in
// the wrong module fails here as it would on the GPU.
CUresult cuModuleLoadData(CUmodule* out, const void* image) {
    LOCK;
    NEED_INIT;
    const auto* h = static_cast<const unsigned char*>(image);
    uint32_t magic;
    uint16_t header;
    uint64_t payload;
    std::memcpy(&magic, h, 4);
    std::memcpy(&header, h + 6, 2);
    std::memcpy(&payload, h + 8, 8);
    if (magic != 0xBA55ED50u) {
        std::fprintf(stderr, "cuda/emu driver: cuModuleLoadData: not a fatbin (magic %#x)\n", magic);
        return INVALID_IMAGE;
    }
    const std::string bytes(reinterpret_cast<const char*>(h), size_t(header) + payload);
    auto* m = new EmuModule();
    for (const EmuKernel& k : registry().kernels) {
        // The name followed by a NUL, as the symbol table stores it (so "rope" does not match
        // "rope_bwd").
        if (bytes.find(std::string(k.name) + '\0') != std::string::npos) m->kernels.push_back(&k);
    }
    if (m->kernels.empty()) {
        delete m;
        std::fprintf(stderr, "cuda/emu driver: cuModuleLoadData: no registered kernel in this image\n");
        return INVALID_IMAGE;
    }
    *out = m;
    return OK;
}

CUresult cuModuleUnload(CUmodule m) {
    delete m;
    return OK;
}

CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    LOCK;
    for (const EmuKernel* k : m->kernels)
        if (std::strcmp(k->name, name) == 0) {
            *f = new EmuFunction{k};
            return OK;
        }
    return NOT_FOUND;
}

// CUfunction_attribute: 0 MAX_THREADS_PER_BLOCK, 8 MAX_DYNAMIC_SHARED_SIZE_BYTES.
CUresult cuFuncSetAttribute(CUfunction f, int attr, int value) {
    LOCK;
    if (attr == 8) {
        if (value < 0 || value > SMEM_OPTIN) return INVALID_VALUE;
        f->max_dynamic_smem = value;
        return OK;
    }
    return OK;
}

CUresult cuFuncGetAttribute(int* v, int attr, CUfunction f) {
    switch (attr) {
        case 0: *v = 1024; break;
        case 8: *v = f->max_dynamic_smem; break;
        default: *v = 0;
    }
    return OK;
}

// Occupancy as an H100 would bound it by threads alone (2048 per SM, at most 32 blocks);
// registers and shared memory are not modelled. Launchers use it only to size grid-stride grids.
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, CUfunction, int block, size_t, unsigned) {
    if (block <= 0 || block > 1024) return INVALID_VALUE;
    *n = std::min(32, 2048 / block);
    return OK;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, CUfunction f, int block, size_t smem) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(n, f, block, smem, 0);
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned smem, CUstream, void** params, void** extra) {
    LOCK;
    NEED_INIT;
    const char* name = f->kernel->name;
    auto refuse = [&](const char* why) {
        std::fprintf(stderr, "cuda/emu driver: launch of %s grid (%u,%u,%u) block (%u,%u,%u) smem %u refused: %s\n",
                     name, gx, gy, gz, bx, by, bz, smem, why);
        return INVALID_VALUE;
    };
    if (extra != nullptr) return refuse("`extra` parameters are not emulated");
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) return refuse("a zero dimension");
    if (gy > 65535 || gz > 65535 || gx > 0x7fffffffu) return refuse("grid beyond the device limits");
    if (bx * by * bz > 1024) return refuse("more than 1024 threads per block");
    if (by != 1 || bz != 1) return refuse("the emulator runs 1-D blocks only");
    if (bx % 32 != 0) return refuse("block size not a multiple of 32 (the emulator runs whole warps)");
    if (int(smem) > f->max_dynamic_smem)
        return refuse("dynamic shared memory above the function's limit (cuFuncSetAttribute "
                      "MAX_DYNAMIC_SHARED_SIZE_BYTES)");
    const unsigned g[3] = {gx, gy, gz}, b[3] = {bx, by, bz};
    f->kernel->run(params, g, b);
    return OK;
}

}  // extern "C"
