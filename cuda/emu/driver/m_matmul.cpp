// The kernels of cuda/matmul.cu, registered with the emulated driver (see module.h).
#define EMU_MODULE_NAME "matmul"
#include "../../matmul.cu"
#include "module.h"
EMU_MODULE(EMU_KERNEL(matmul_fwd), EMU_KERNEL(matmul_bwd_x), EMU_KERNEL(matmul_bwd_w),
           EMU_KERNEL(matmul_fwd_bf16), EMU_KERNEL(matmul_bwd_x_bf16), EMU_KERNEL(matmul_bwd_w_bf16),
           EMU_KERNEL(matmul_fwd_async), EMU_KERNEL(matmul_fwd_async_bf16),
           EMU_KERNEL(matmul_bwd_x_async), EMU_KERNEL(matmul_bwd_w_async),
           EMU_KERNEL(matmul_to_bf16), EMU_KERNEL(matmul_to_bf16_from_bf16))
