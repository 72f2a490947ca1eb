// The kernels of cuda/adamw.cu, registered with the emulated driver (see module.h).
#define EMU_MODULE_NAME "adamw"
#include "../../adamw.cu"
#include "module.h"
EMU_MODULE(EMU_KERNEL(adamw_step), EMU_KERNEL(grad_norm_partials), EMU_KERNEL(grad_norm_finish))
