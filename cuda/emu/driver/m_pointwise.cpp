// The kernels of cuda/pointwise.cu, registered with the emulated driver (see module.h).
#define EMU_MODULE_NAME "pointwise"
#include "../../pointwise.cu"
#include "module.h"
EMU_MODULE(EMU_KERNEL(add_f32), EMU_KERNEL(add_rows_f32), EMU_KERNEL(rope), EMU_KERNEL(swiglu_fwd), EMU_KERNEL(swiglu_bwd),
           EMU_KERNEL(clamp_f32), EMU_KERNEL(clamp_bwd_f32))
