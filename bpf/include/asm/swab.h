/* Architecture-neutral for the BPF target; see types.h beside this file. */
#include <asm-generic/swab.h>
