// The kernels of cuda/embedding.cu, registered with the emulated driver (see module.h).
#define EMU_MODULE_NAME "embedding"
#include "../../embedding.cu"
#include "module.h"
EMU_MODULE(EMU_KERNEL(embedding_fwd), EMU_KERNEL(embedding_bwd))
