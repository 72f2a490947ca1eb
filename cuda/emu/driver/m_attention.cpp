// The kernels of cuda/attention.cu, registered with the emulated driver (see module.h).
#define EMU_MODULE_NAME "attention"
#include "../../attention.cu"
#include "module.h"
EMU_MODULE(EMU_KERNEL(attention_fwd_d32), EMU_KERNEL(attention_bwd_dkdv_d32), EMU_KERNEL(attention_bwd_dq_d32), EMU_KERNEL(attention_fwd_d64), EMU_KERNEL(attention_bwd_dkdv_d64), EMU_KERNEL(attention_bwd_dq_d64), EMU_KERNEL(attention_fwd_d128), EMU_KERNEL(attention_bwd_dkdv_d128), EMU_KERNEL(attention_bwd_dq_d128), EMU_KERNEL(attention_bwd_delta))
