// The kernels of cuda/layernorm.cu, registered with the emulated driver (see module.h).
#define EMU_MODULE_NAME "layernorm"
#include "../../layernorm.cu"
#include "module.h"
EMU_MODULE(EMU_KERNEL(layernorm_fwd), EMU_KERNEL(layernorm_fwd_residual), EMU_KERNEL(layernorm_bwd),
           EMU_KERNEL(layernorm_fwd_reread), EMU_KERNEL(layernorm_fwd_residual_reread), EMU_KERNEL(layernorm_bwd_reread))
