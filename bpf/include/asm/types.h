/* The BPF target is 64-bit little- or big-endian whatever the build host, so the
 * uapi headers get the architecture-neutral integer types rather than the host's. */
#include <asm-generic/int-ll64.h>
