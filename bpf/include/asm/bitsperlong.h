/* BPF is a 64-bit target; see types.h beside this file. */
#include <asm-generic/bitsperlong.h>
