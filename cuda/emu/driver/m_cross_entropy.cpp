// The kernels of cuda/cross_entropy.cu, registered with the emulated driver (see module.h).
#define EMU_MODULE_NAME "cross_entropy"
#include "../../cross_entropy.cu"
#include "module.h"
EMU_MODULE(EMU_KERNEL(cross_entropy_fwd_bwd))
