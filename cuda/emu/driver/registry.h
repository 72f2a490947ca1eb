// The link between the emulated driver (driver.cpp) and the kernels compiled for the host
// (module.h, one translation unit per cuda/*.cu file): each kernel file registers its
// `extern "C"` kernels under its module name; cuLaunchKernel finds them here.
#pragma once
#include <cstddef>

/// One kernel: its name as the Rust launchers look it up (`CudaModule::load_function`), the
/// module (`.cu` file stem) it lives in, and a trampoline that unpacks the driver's `void**`
/// parameter array into the kernel's typed arguments and runs the whole grid on the host.
struct EmuKernel {
    const char* module;
    const char* name;
    void (*run)(void** params, const unsigned grid[3], const unsigned block[3]);
};

/// Called once per module at load time (static initialisation of its translation unit).
void emu_register(const EmuKernel* kernels, size_t n);

/// Called by a trampoline for every pointer argument before the launch: aborts with a message
/// naming the kernel and the argument unless `p` is null or points into a live allocation
/// (the GPU would read or write whatever lies there; the emulator refuses).
void emu_check_pointer(const char* kernel, int arg, const void* p);
