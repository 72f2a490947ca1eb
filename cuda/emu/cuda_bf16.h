// Stand-in for the CUDA header when cuda/emu compiles the kernels for the host: the bf16 types
// and conversions common.cuh names (unused by the emulated kernels).
#pragma once
#include <cstring>
struct __nv_bfloat16 { unsigned short x; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline __nv_bfloat16 __float2bfloat16_rn(float) { return {0}; }
inline float __bfloat162float(__nv_bfloat16) { return 0; }
inline __nv_bfloat162 __floats2bfloat162_rn(float, float) { return {}; }
