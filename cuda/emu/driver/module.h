// Registration of one kernel file's `extern "C"` kernels with the emulated driver. A module
// translation unit (modules.cpp builds one per cuda/*.cu file) is:
//
//   #include "../../matmul.cu"          // compiled for the host through emu.h and mma.h
//   EMU_MODULE(matmul, EMU_KERNEL(matmul_fwd), EMU_KERNEL(matmul_bwd_x), ...)
//
// EMU_KERNEL(k) builds a trampoline from k's own signature: argument i of the launch is read as
// `*(Ai*)params[i]`, exactly as the GPU reads the parameter buffer cuLaunchKernel was given, and
// every pointer argument is checked to point into a live allocation before the grid runs.
#pragma once
#include "registry.h"
#include <type_traits>
#include <utility>

template <class A> inline void emu_check_arg(const char* kernel, int i, const A& a) {
    if constexpr (std::is_pointer_v<A>) emu_check_pointer(kernel, i, static_cast<const void*>(a));
}

template <class... A, size_t... I>
inline void emu_invoke(const char* name, void (*k)(A...), void** p, const unsigned g[3], const unsigned b[3],
                       std::index_sequence<I...>) {
    (emu_check_arg(name, int(I), *static_cast<std::remove_cv_t<A>*>(p[I])), ...);
    launch({g[0], g[1], g[2]}, {b[0], b[1], b[2]},
           [&] { k(*static_cast<std::remove_cv_t<A>*>(p[I])...); });
}

template <class... A>
inline void emu_invoke(const char* name, void (*k)(A...), void** p, const unsigned g[3], const unsigned b[3]) {
    emu_invoke(name, k, p, g, b, std::index_sequence_for<A...>{});
}

#define EMU_KERNEL(k)                                                                  \
    EmuKernel {                                                                        \
        EMU_MODULE_NAME, #k, [](void** p, const unsigned g[3], const unsigned b[3]) { \
            emu_invoke(#k, &k, p, g, b);                                               \
        }                                                                              \
    }

#define EMU_MODULE(...)                                                                       \
    namespace {                                                                               \
    const EmuKernel emu_kernels[] = {__VA_ARGS__};                                            \
    const int emu_registered = (emu_register(emu_kernels, sizeof emu_kernels / sizeof *emu_kernels), 0); \
    }
