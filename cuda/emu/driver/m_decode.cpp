// The kernels of cuda/decode.cu, registered with the emulated driver (see module.h).
#define EMU_MODULE_NAME "decode"
#include "../../decode.cu"
#include "module.h"
EMU_MODULE(EMU_KERNEL(kv_append), EMU_KERNEL(attention_decode_r1), EMU_KERNEL(attention_decode_r2), EMU_KERNEL(attention_decode_r4), EMU_KERNEL(attention_decode_r8))
